"""Open Workbench: an open-source server for the Posit Workbench API."""

__version__ = "0.1.0"
