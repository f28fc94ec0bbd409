"""A job that ended, or was asked to: its run's final state from sacct's record, decided on plain
data, as lifecycle.py decides the rest of a run's life in Slurm.

sacct lags a job's end by about a second and can lag much longer, keep a placeholder row, show a
record of another job under a reused id, or lose a job's end altogether; `settle` says which of
those the record shows (a `Settle`), and the functions after it say what each means for the
run, as an `Outcome` the engine records (hpcops/engine/follow.py gathers the inputs). Tested on
plain data in tests/unit/test_lifecycle_decisions.py.
"""

from __future__ import annotations

from enum import Enum

from hpcops.backoff import backoff_s
from hpcops.describe import clip
from hpcops.lifecycle import NOT_STARTED, Outcome
from hpcops.rundir import parse_progress
from hpcops.slurm.parse import AccountingRecord, QueueEntry, parse_gpus, parse_tres_cpus
from hpcops.states import RunState
from hpcops.store import Run

# Without cgroups, OverMemoryKill ends the job FAILED 0:9 with this line in stderr (Slurm 22.05,
# docs/notes-slurm.md); a user asks "did it run out of memory?", so say so.
OOM_TEXT = "Exceeded job memory limit"
# Without an accounting record this long after the job's end marker, trust the marker.
ACCOUNTING_PATIENCE_S = 120.0
# An array task cancelled while pending has no record ever: settled this long after it left.
CANCELLED_TASK_PATIENCE_S = 5.0
# A job that left squeue without a marker and without a record this long is UNKNOWN.
VANISHED_PATIENCE_S = 600.0
# A stager's error, as it reaches a run's reason (and MLflow's tags): bounded.
_REASON_MAX_CHARS = 2000


def is_placeholder(record: AccountingRecord) -> bool:
    """For about a second after a job starts, sacct shows a row named `allocation` with no
    comment (Slurm 22.05, tests/fixtures/slurm/sacct_first_second.txt); our jobs always carry a
    comment once they have ended, so such a row is not the job's final record yet."""
    return record.name == "allocation" and record.token is None


def exit_code(record: AccountingRecord, marker: int | None) -> int | None:
    """sacct reduces exit codes modulo 128 (`exit 143` shows as 15:0, measured on 22.05); the
    script's own exit marker has the real one. Use it when the two agree modulo 128."""
    if marker is None or record.exit_code is None or record.signal:
        return record.exit_code
    return marker if marker % 128 == record.exit_code % 128 else record.exit_code


def gone_from_squeue(
    run: Run, now: float, last_queue: list[QueueEntry], last_queue_at: float | None
) -> bool:
    """The job ended long ago and no poll since has listed it."""
    if run.end_seen_at is None or last_queue_at is None:
        return False
    return (
        now - run.end_seen_at > ACCOUNTING_PATIENCE_S
        and last_queue_at > run.end_seen_at
        and all(e.job_id != run.slurm_job_id for e in last_queue)
    )


class Settle(Enum):
    """What to do with a run whose job ended (or was asked to), given sacct's answer."""

    FINISH = "finish"  # sacct has its final record: `finish`
    REQUEUED = "requeued"  # Slurm queued it again under the same id: `back_to_pending`
    FROM_MARKER = "from marker"  # no record after a long wait: `finish_from_marker`
    VANISHED = "vanished"  # no record and no exit marker after a longer wait: `vanished`
    WAIT = "wait"  # sacct lags the job's end: ask again later (`sacct_retry_s`)
    # An array task cancelled while it pended: Slurm keeps no record of it: `cancelled_pending`
    CANCELLED_PENDING = "cancelled pending"


def settle(run: Run, record: AccountingRecord | None, now: float, *, gone: bool) -> Settle:
    """How to settle a run given sacct's record of its job (None: no record). `gone`: the job
    has not been in squeue since it ended long ago (`gone_from_squeue`)."""
    if record is not None and is_placeholder(record):
        record = None  # slurmdbd has not recorded the job itself yet
    if record is not None and record.token and run.token and record.token != run.token:
        # Another job's record under this id (ids are reused after slurmctld lost its state):
        # it says nothing of this run's job. Judge as if absent.
        record = None
    if record is not None and record.state.is_terminal:
        return Settle.FINISH
    if record is not None and record.state is RunState.PENDING and run.state == RunState.RUNNING:
        # It wrote its exit marker, yet its job is pending again: Slurm requeued it, and sacct
        # already shows the new attempt (the PREEMPTED record can be gone by the time we ask,
        # seen on 22.05).
        return Settle.REQUEUED
    if record is not None and gone:
        # sacct still says it runs, squeue has not seen it since it ended: a "runaway" record
        # (its end was lost between slurmctld and slurmdbd). Judge as if absent.
        record = None
    if record is None and run.end_seen_at is not None:
        waited = now - run.end_seen_at
        if _cancelled_pending_task(run) and waited > CANCELLED_TASK_PATIENCE_S:
            return Settle.CANCELLED_PENDING
        if run.marker_exit_code is not None and waited > ACCOUNTING_PATIENCE_S:
            return Settle.FROM_MARKER
        if run.marker_exit_code is None and waited > VANISHED_PATIENCE_S:
            return Settle.VANISHED
    return Settle.WAIT


def _cancelled_pending_task(run: Run) -> bool:
    """A point of a sweep, cancelled by a user before it ever started. Slurm 22.05 keeps no
    accounting record of an array task cancelled alone while pending, not by its id, not by its
    array's, not in a time window (docs/notes-slurm.md, "Job arrays")."""
    return (
        run.array_task is not None
        and run.cancel_requested_by is not None
        and run.started_at is None
        and RunState(run.state) in NOT_STARTED
    )


def cancelled_pending(run: Run, now: float) -> Outcome:
    """An array task that left squeue after its cancel, never having started."""
    return Outcome(
        RunState.CANCELLED,
        expect=(RunState(run.state),),
        note=f"cancelled while pending, as {run.cancel_requested_by} asked (Slurm keeps no "
        f"record of array task {run.slurm_job_id})",
        fields={"ended_at": now, "slurm_state": "CANCELLED"},
        forget=True,
    )


def sacct_retry_s(misses: int) -> float:
    """Not final yet (sacct lags the job's end by about a second): ask again, backing off."""
    return backoff_s(misses, first_s=1.0, max_s=30.0)


def may_be_requeued(record: AccountingRecord) -> bool:
    """A PREEMPTED or NODE_FAIL record may be followed by the same job pending again (Slurm
    requeues it): only squeue's live view can tell."""
    return record.state in (RunState.PREEMPTED, RunState.NODE_FAIL)


def staging_may_have_failed(run: Run, record: AccountingRecord) -> bool:
    """Slurm cancelled the run's job, and it had a staging job nobody asked to cancel: its
    staging may have failed (afterok, kill-on-invalid-dep). Read its progress to tell."""
    return (
        record.state is RunState.CANCELLED
        and run.staging_job_id is not None
        and not run.cancel_requested_by
    )


def staging_failure(run: Run, progress_text: str | None) -> str | None:
    """Why the run's staging job failed, from the stager's progress file (None: unreadable);
    None if it did not fail."""
    progress = parse_progress(progress_text) or {}
    if progress.get("token") != run.token:
        return "the staging job ended before it staged the data (hpcops logs --staging)"
    if progress.get("error"):
        # The stager's words, which a job can make as long as it likes: bounded, as a reason
        # must be to reach MLflow's tags.
        return clip(str(progress["error"]), _REASON_MAX_CHARS)
    targets = progress.get("targets")
    done = isinstance(targets, dict) and all(
        isinstance(t, dict) and t.get("phase") == "done" for t in targets.values()
    )
    return None if done else "the staging job ended before it staged the data"


def finish(
    run: Run,
    record: AccountingRecord,
    now: float,
    *,
    staging_error: str | None = None,
    log_tail: str | None = None,
) -> Outcome:
    """The run's final state from sacct's record. `staging_error`: why its staging job failed
    (`staging_failure`); `log_tail`: the end of the log `finish_log` names (None: not read)."""
    state = record.state
    reason_text = record.reason
    if staging_error is not None:
        # Slurm cancelled the run's job because its staging job failed (afterok,
        # kill-on-invalid-dep): a failed run, with DVC's words and the stager's log.
        state = RunState.FAILED
        reason_text = f"data staging failed: {staging_error}"
    elif state is RunState.FAILED and OOM_TEXT in (log_tail or ""):
        state = RunState.OUT_OF_MEMORY
    # sacct's Reason is "None" for most ended jobs; say what a user needs, or nothing at all.
    reason: str | None = reason_text if reason_text not in ("", "None") else None
    if reason is None and state is not RunState.COMPLETED:
        reason = f"{record.slurm_state}, exit {record.exit_code}:{record.signal}"
    alloc = record.alloc_tres
    optional = {
        "submitted_at": record.submitted_at,
        "started_at": record.started_at,
        "ended_at": record.ended_at or now,
        "elapsed_s": record.elapsed_s,
        "total_cpu_s": record.total_cpu_s,
        "max_rss_bytes": record.max_rss_bytes,
        "stderr_tail": log_tail,
        "slurm_state": record.slurm_state,
        "alloc_cpus": parse_tres_cpus(alloc) if alloc else None,
        "alloc_gpus": parse_gpus(alloc) if alloc else None,
    }
    return Outcome(
        state,
        expect=(RunState(run.state),),
        note=f"Slurm: {record.slurm_state}, exit {record.exit_code}:{record.signal}",
        fields={
            "exit_code": exit_code(record, run.marker_exit_code),
            "signal": record.signal,
            "reason": reason,
            **{k: v for k, v in optional.items() if v is not None},
        },
        forget=True,
    )


def finish_log(record: AccountingRecord, staging_error: str | None) -> str | None:
    """Which log's tail `finish` wants: the stager's when staging failed, the job's stderr when
    it did not complete, none when it did."""
    if staging_error is not None:
        return "staging"
    return None if record.state is RunState.COMPLETED else "stderr"


def finish_from_marker(run: Run, stderr_tail: str | None) -> Outcome:
    """No accounting record long after the job's exit marker: its state from the marker.
    `stderr_tail` is read only for a non-zero exit (`marker_wants_stderr`)."""
    assert run.marker_exit_code is not None
    code = run.marker_exit_code
    return Outcome(
        RunState.COMPLETED if code == 0 else RunState.FAILED,
        expect=(RunState(run.state),),
        note=f"no accounting record from sacct after {ACCOUNTING_PATIENCE_S:.0f} s; "
        "state from the job's exit marker",
        fields={
            "exit_code": code,
            "ended_at": run.end_seen_at,
            "stderr_tail": None if code == 0 else stderr_tail,
            "reason": "state from the job's exit marker (no sacct record)",
        },
        forget=True,
    )


def vanished(run: Run, now: float) -> Outcome:
    """The job left squeue without an exit marker, and sacct never recorded it."""
    return Outcome(
        RunState.UNKNOWN,
        expect=(RunState(run.state),),
        note=f"job {run.slurm_job_id} left squeue without an exit marker and sacct has no "
        "record of it",
        fields={"reason": "vanished: no exit marker and no accounting record", "ended_at": now},
        forget=True,
    )
