"""Detectors (drift, toxicity, quality): arrive with the detectors issue."""
