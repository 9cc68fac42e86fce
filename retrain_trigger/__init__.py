"""Decisions over detections (route, inhibit, silence, dedup, cooldown, publish): arrive with the decide-and-act issue."""
