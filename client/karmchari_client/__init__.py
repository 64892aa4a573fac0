"""Client side of Karmchari, for programs that talk to a running service.

Standard library only, and a package name of its own, so that importing it
into a worker program pulls in nothing else and clashes with nothing.
"""

__version__ = "0.1.0"

from karmchari_client.backoff import Backoff
from karmchari_client.client import ApiError, Client, ServiceUnavailable
from karmchari_client.interrupts import Interrupted
from karmchari_client.worker import JobEnded, JobKilled, Worker

__all__ = ["ApiError", "Backoff", "Client", "Interrupted", "JobEnded", "JobKilled",
           "ServiceUnavailable", "Worker", "__version__"]
