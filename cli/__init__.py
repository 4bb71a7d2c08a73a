"""The ``billing`` operator command."""
