"""The command groups of ``loopwatch``, one module each; ``services.cli`` puts them together."""
