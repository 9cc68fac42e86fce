"""The top layer: the CLI, the embedded broker, the worker, replay and the demo."""
