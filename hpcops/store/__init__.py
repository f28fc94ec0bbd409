"""The daemon's database: runs and their append-only event log."""

from hpcops.store.db import Store
from hpcops.store.models import Audit, Event, QuotaOverride, RelayCursor, Run, TrackingOp

__all__ = ["Audit", "Event", "QuotaOverride", "RelayCursor", "Run", "Store", "TrackingOp"]
