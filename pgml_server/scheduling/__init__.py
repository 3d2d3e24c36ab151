"""Scheduled retraining and drift-triggered retraining: the loop every server process runs."""
from .scheduler import Scheduler  # noqa: F401
