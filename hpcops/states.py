"""The run lifecycle, and the one table that maps Slurm's job states onto it.

QUEUED → (HELD) → SUBMITTING → (STAGING) → PENDING → RUNNING → COMPLETED | FAILED | CANCELLED |
TIMEOUT | OUT_OF_MEMORY | NODE_FAIL | PREEMPTED | UNKNOWN

The legal changes, every one of them, are the table TRANSITIONS below; the store checks it.

Retries (a spec's `retry:`): a run is one or more attempts, each one Slurm job. When an attempt's
job ends in a state the spec retries on, with attempts left, the run goes straight back to QUEUED
(STAGING | PENDING | RUNNING → QUEUED, by the daemon), never through the ended state, and the
ended attempt is kept as a row of its own (store: Attempt). `hpcops retry` queues an ENDED run
again by hand (→ QUEUED from any terminal state but COMPLETED: a completed run is rerun, not
retried). A Slurm requeue (same job id, pending again) stays within one attempt.

STAGING: the run's data is being staged by a Slurm job of its own, which the run's job depends on
(afterok); the run's job waits in Slurm meanwhile.
"""

from __future__ import annotations

import logging
from enum import StrEnum

log = logging.getLogger(__name__)


class RunState(StrEnum):
    QUEUED = "QUEUED"
    HELD = "HELD"
    STAGING = "STAGING"
    SUBMITTING = "SUBMITTING"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def in_slurm(self) -> bool:
        """The run has (or may have) a Slurm job that the daemon must follow."""
        return self in IN_SLURM_STATES


TERMINAL_STATES = frozenset(
    {
        RunState.COMPLETED,
        RunState.FAILED,
        RunState.CANCELLED,
        RunState.TIMEOUT,
        RunState.OUT_OF_MEMORY,
        RunState.NODE_FAIL,
        RunState.PREEMPTED,
        RunState.UNKNOWN,
    }
)
IN_SLURM_STATES = frozenset(
    {RunState.SUBMITTING, RunState.STAGING, RunState.PENDING, RunState.RUNNING}
)
WAITING_STATES = frozenset({RunState.QUEUED, RunState.HELD})
# The runs `hpcops retry` queues again, the one definition the engine, the API (a run, a sweep's
# points) and TRANSITIONS read: any that ended but a completed one, which is rerun (a new run).
RETRYABLE_STATES = TERMINAL_STATES - {RunState.COMPLETED}

# Every state a run is created in: a submission, a rerun and a schedule's firing all queue it.
INITIAL_STATES = frozenset({RunState.QUEUED})

_SLURM_ENDS = TERMINAL_STATES  # whatever sacct's final record says (UNKNOWN: a state nobody mapped)

# The legal state changes: from-state -> the states a run may move to from there. The store refuses
# any other (IllegalTransition). Staying in a state is not a change and always allowed (a requeued
# job seen pending again while it was pending). Read off every transition the daemon makes:
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    # held by a member or lead; claimed for submission; cancelled before release; failed before
    # the claim when its spec no longer fits the cluster or the lab's templates
    RunState.QUEUED: frozenset(
        {RunState.HELD, RunState.SUBMITTING, RunState.CANCELLED, RunState.FAILED}
    ),
    # released back into the queue; cancelled before release
    RunState.HELD: frozenset({RunState.QUEUED, RunState.CANCELLED}),
    # sbatch answered (STAGING: with a staging job first) or the job was adopted by token after
    # a crash (RUNNING: it wrote its start marker); queued again on a Slurm limit or when no job
    # carries the token; failed when Slurm refused the job; cancelled before any job existed
    RunState.SUBMITTING: frozenset(
        {
            RunState.STAGING,
            RunState.PENDING,
            RunState.RUNNING,
            RunState.QUEUED,
            RunState.FAILED,
            RunState.CANCELLED,
        }
    ),
    # data staged; the job started (marker or squeue); requeued; ended (sacct, marker, vanished);
    # its attempt ended in a state the spec retries on: queued again for the next attempt
    RunState.STAGING: frozenset(
        {RunState.PENDING, RunState.RUNNING, RunState.QUEUED, *_SLURM_ENDS}
    ),
    # the job started (marker or squeue); ended before or without starting (sacct, vanished);
    # the next attempt queued (a node lost while the job pended)
    RunState.PENDING: frozenset({RunState.RUNNING, RunState.QUEUED, *_SLURM_ENDS}),
    # requeued by Slurm after preemption or a node failure; ended; the next attempt queued
    RunState.RUNNING: frozenset({RunState.PENDING, RunState.QUEUED, *_SLURM_ENDS}),
    # an ended run stays ended (a rerun is a new run), except that `hpcops retry` queues its next
    # attempt by hand; a completed run is never retried
    **{
        state: frozenset({RunState.QUEUED}) if state in RETRYABLE_STATES else frozenset[RunState]()
        for state in RunState
        if state in TERMINAL_STATES
    },
}


def why_not_retryable(run_id: int, state: RunState) -> str | None:
    """Why `hpcops retry` refuses a run in `state`, in the one wording the engine and the API
    give (None: it may be retried)."""
    if state in RETRYABLE_STATES:
        return None
    if state is RunState.COMPLETED:
        return f"run {run_id} completed; `hpcops rerun {run_id}` runs it again as a new run"
    return f"run {run_id} is {state}; only an ended run can be retried"


def may_transition(from_state: RunState, to_state: RunState) -> bool:
    """Whether a run in `from_state` may move to `to_state` (TRANSITIONS; staying is allowed)."""
    return from_state == to_state or to_state in TRANSITIONS[from_state]


# Slurm job state names (squeue %T / sacct State, Slurm 22.05, squeue(1) "JOB STATE CODES") onto
# ours. Live states map to PENDING/RUNNING; final ones to the terminal state a user expects.
# sacct writes a cancellation as "CANCELLED by 1000"; only the first word is looked up.
# PREEMPTED with PreemptMode=REQUEUE is followed by the job pending again under the same id
# (docs/notes-slurm.md), so squeue's live view wins over a PREEMPTED seen earlier.
SLURM_STATE_TABLE: dict[str, RunState] = {
    "PENDING": RunState.PENDING,
    "CONFIGURING": RunState.PENDING,
    "REQUEUED": RunState.PENDING,
    "REQUEUE_FED": RunState.PENDING,
    "REQUEUE_HOLD": RunState.PENDING,
    "RESV_DEL_HOLD": RunState.PENDING,
    "SPECIAL_EXIT": RunState.PENDING,
    "RESIZING": RunState.RUNNING,
    "RUNNING": RunState.RUNNING,
    "COMPLETING": RunState.RUNNING,
    "SIGNALING": RunState.RUNNING,
    "STAGE_OUT": RunState.RUNNING,
    "SUSPENDED": RunState.RUNNING,
    "STOPPED": RunState.RUNNING,
    "COMPLETED": RunState.COMPLETED,
    "FAILED": RunState.FAILED,
    "BOOT_FAIL": RunState.FAILED,
    "DEADLINE": RunState.TIMEOUT,
    "TIMEOUT": RunState.TIMEOUT,
    "CANCELLED": RunState.CANCELLED,
    "REVOKED": RunState.CANCELLED,
    "OUT_OF_MEMORY": RunState.OUT_OF_MEMORY,
    "NODE_FAIL": RunState.NODE_FAIL,
    "PREEMPTED": RunState.PREEMPTED,
}


def from_slurm(state: str) -> RunState:
    """Map a Slurm state string; one nobody mapped becomes UNKNOWN and a warning, never a crash."""
    word = state.strip().split(" ", 1)[0].rstrip("+").upper()
    mapped = SLURM_STATE_TABLE.get(word)
    if mapped is None:
        log.warning("unmapped Slurm job state %r; recording UNKNOWN", state)
        return RunState.UNKNOWN
    return mapped
