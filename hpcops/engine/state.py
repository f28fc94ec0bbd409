"""What every part of the engine shares: its collaborators, and the loop's mutable state.

`Parts` holds the collaborators daemon.py built and passed in (the engine builds none of its
own), `LoopState` the bookkeeping one tick leaves for the next. Both are passed to the engine's
modules explicitly, so what a step reads and changes is in its signature.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpcops import policy
from hpcops.backoff import Health
from hpcops.code.mirror import CodeMirror
from hpcops.config import Config
from hpcops.data.cache import ContentCache
from hpcops.jobcontext import Placement
from hpcops.slurm.backend import SlurmBackend
from hpcops.slurm.parse import Partition, QueueEntry
from hpcops.store import Store
from hpcops.transport.base import Transport

if TYPE_CHECKING:
    from hpcops.tracking.worker import Tracker


@dataclass(frozen=True)
class Parts:
    """The engine's collaborators and the settings derived from its config."""

    store: Store
    slurm: SlurmBackend
    # The run directories' files, where the jobs see them: this machine's filesystem, or the
    # cluster's over the same SSH connection as Slurm's commands.
    files: Transport
    config: Config
    home: Path
    code_mirror: CodeMirror
    data_cache: ContentCache
    # MLflow records (hpcops/tracking): None when tracking is off. Its own thread talks to the
    # server; the loop only asks it what a job's environment is and whether to wait.
    tracker: Tracker | None
    clock: Callable[[], float]
    # A test-only fault point (HPCOPS_FAULT): the daemon kills itself with SIGKILL there.
    fault: str | None
    placement: Placement

    @property
    def slurm_user(self) -> str:
        """The Slurm user the lab's jobs belong to ("" when the backend does not say)."""
        return getattr(self.slurm, "user", "")


# slurmctld's health: the one Health record of backoff.py.
SlurmHealth = Health


@dataclass(frozen=True)
class EngineStatus:
    """What the engine can tell about itself, for `hpcops status`/`ls`/`quota` (read-only)."""

    health: SlurmHealth
    last_poll_at: float | None  # the last squeue that answered
    decision: policy.Decision | None  # the last release plan: the queue's order and reasons
    usage: dict[str, float]  # fair-share usage by user, as last read


@dataclass
class LoopState:
    """The loop's bookkeeping between ticks; none of it survives a restart, by design (the
    database does, and the first tick rebuilds the rest)."""

    health: SlurmHealth = field(default_factory=SlurmHealth)
    # Set to end the loop's wait early: something changed that release should see now.
    wake: threading.Event = field(default_factory=threading.Event)
    # Set once a tick has run: the first is the start-up reconciliation, after which the
    # database says which runs are really still active (schedules wait for it).
    ticked: threading.Event = field(default_factory=threading.Event)
    last_queue: list[QueueEntry] = field(default_factory=list)
    last_queue_at: float | None = None
    next_squeue_at: float = 0.0  # 0: the first tick polls, which is the start-up reconciliation
    markers_read_at: float = float("-inf")  # when a tick last read the runs' markers
    # Whether slurmctld itself answered this tick (squeue or sbatch): only that proves it is
    # reachable again; sacct goes to slurmdbd, which may answer while slurmctld is down.
    ctld_answered: bool = False
    # slurmdbd's health (sacct), kept apart: it may be down while slurmctld answers.
    dbd_health: Health = field(default_factory=Health)
    # The earliest end of a Slurm-limit back-off among the runs the last plan released: plan
    # again then (inf: none waits).
    retry_due_at: float = float("inf")
    # The earliest end of a retry's back-off (Run.retry_not_before) among the queued runs the
    # last plan left out for it (inf: none waits).
    backoff_due_at: float = float("inf")
    next_sacct_at: dict[int, float] = field(default_factory=dict)
    sacct_misses: dict[int, int] = field(default_factory=dict)
    cancel_sent: set[int] = field(default_factory=set)
    # Runs that a full Slurm limit refused: not before this time (back-off per run, so one run
    # Slurm keeps refusing does not hold up the lab's other runs).
    retry_after: dict[int, float] = field(default_factory=dict)
    limit_refusals: dict[int, int] = field(default_factory=dict)
    # The release plan is recomputed only when something it depends on changed (a run was
    # queued, changed or ended; the poll saw other jobs; usage was re-read), and at least every
    # REPLAN_S: an idle daemon with 10,000 queued runs must stay idle.
    dirty: bool = True
    generation: int = 0  # bumped by every change; a plan knows which one it saw
    planned_at: float = 0.0
    last_decision: policy.Decision | None = None
    usage: dict[str, float] = field(default_factory=dict)
    usage_at: float | None = None
    partitions: dict[str, Partition] = field(default_factory=dict)
    partitions_at: float | None = None
    # The cluster's MaxArraySize (a sweep's arrays are split above it), read once when needed.
    max_array_size: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # partitions, shared with the API
    # Held by a request that changes several runs as one (a sweep's points released, topped,
    # given a priority) and by the loop's release step: release sees all of the change or none
    # of it, so the points it frees go into Slurm together (one array), not one by one.
    batch: threading.Lock = field(default_factory=threading.Lock)

    def changed(self) -> None:
        """Something release depends on changed: plan again, now."""
        self.generation += 1
        self.dirty = True
        self.wake.set()

    def forget(self, run_id: int) -> None:
        """A run left Slurm for good: drop its bookkeeping and release into the room it left."""
        self.next_sacct_at.pop(run_id, None)
        self.sacct_misses.pop(run_id, None)
        self.cancel_sent.discard(run_id)
        self.retry_after.clear()  # a job ended, so a full Slurm limit may have room again
        self.changed()  # release now, not at the next replan
