"""Karmchari: a REST job manager that holds the global state of long-running jobs."""

__version__ = "0.1.0"
