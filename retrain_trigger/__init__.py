"""Decisions over detections: route, inhibit, silence, dedup, cooldown, publish.

Arrives with the decide-and-act issue.
"""
