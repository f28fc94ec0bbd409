"""The daemon's database: runs and their append-only event log."""

from hpcops.store.db import Store
from hpcops.store.models import Event, Run

__all__ = ["Event", "Run", "Store"]
