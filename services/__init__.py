"""Processes and commands: settings, the embedded broker, the worker, replay and the demo."""
