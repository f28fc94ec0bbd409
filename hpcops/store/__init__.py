"""The daemon's database: runs and their append-only event log."""

from hpcops.store.db import Store
from hpcops.store.models import (
    Audit,
    Event,
    Firing,
    QuotaOverride,
    RelayCursor,
    Run,
    Schedule,
    TrackingOp,
)

__all__ = [
    "Audit",
    "Event",
    "Firing",
    "QuotaOverride",
    "RelayCursor",
    "Run",
    "Schedule",
    "Store",
    "TrackingOp",
]
