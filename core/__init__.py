"""The lowest layer above ``schemas``: settings, config files, logging, child processes.

Every other package may import it; it imports only ``schemas``.
"""
