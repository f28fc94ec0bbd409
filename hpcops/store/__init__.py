"""The daemon's database, one module per table group behind the one `Store` callers use:

engine.py     the SQLite file: WAL, BEGIN IMMEDIATE, sessions, the additive migration
runs.py       runs, their append-only events and their ended attempts; every state change
              checked (TRANSITIONS)
schedules.py  schedules and their firings
sweeps.py     sweeps, whose points are runs
pipelines.py  pipelines and their steps, whose runs wait (gated) until a step opens
tracking.py   the MLflow outbox and the relay's cursors
audit.py      the audit log and the leads' quota overrides
models.py     the tables, and the typed updates the store takes
"""

from hpcops.store.audit import AuditTables
from hpcops.store.models import (
    Attempt,
    AttemptEnd,
    Audit,
    Event,
    Firing,
    Pipeline,
    PipelineStep,
    PipelineUpdate,
    QuotaOverride,
    RelayCursor,
    Run,
    RunUpdate,
    Schedule,
    ScheduleUpdate,
    Sweep,
    SweepUpdate,
    TrackingFields,
    TrackingOp,
)
from hpcops.store.pipelines import PipelineTables, StepRuns
from hpcops.store.runs import RunTables
from hpcops.store.schedules import ScheduleTables
from hpcops.store.sweeps import SweepTables
from hpcops.store.tracking import TrackingTables


class Store(PipelineTables, SweepTables, RunTables, ScheduleTables, TrackingTables, AuditTables):
    """The daemon's database: `Store(path, track=...)`, one transaction per call."""


__all__ = [
    "Attempt",
    "AttemptEnd",
    "Audit",
    "Event",
    "Firing",
    "Pipeline",
    "PipelineStep",
    "PipelineUpdate",
    "QuotaOverride",
    "RelayCursor",
    "Run",
    "RunUpdate",
    "Schedule",
    "ScheduleUpdate",
    "StepRuns",
    "Store",
    "Sweep",
    "SweepUpdate",
    "TrackingFields",
    "TrackingOp",
]
