"""The ``workbench`` command."""
