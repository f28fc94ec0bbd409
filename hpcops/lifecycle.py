"""A run's life in Slurm, decided on plain data: what a marker, a squeue row or an sbatch error
means for the run, as an `Outcome` the engine records. What sacct's record of an ended job means
is decided in hpcops/settling.py, on the same terms.

Nothing here reads a file, calls Slurm or writes the database. The engine (hpcops/engine) reads
the markers, runs squeue, sacct and sbatch, passes what it got here, and records the outcome
with `store.transition`; so each decision is tested on plain data
(tests/unit/test_lifecycle_decisions.py).

Submission is idempotent (docs/design.md, decision 3): a run is claimed as SUBMITTING with a fresh
token before sbatch, and the token rides in the job's --comment. After a crash a SUBMITTING run
is found again by its token in squeue or sacct and adopted (`adopt`, `settle_orphan`); one that
Slurm never saw is queued again only after `submit_grace_s`, by which time an sbatch orphaned by
the crash has returned.

What happens after a job ended in a state a spec retries on is decided in hpcops/retries.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hpcops.backoff import backoff_s
from hpcops.errors import SlurmError, SlurmRejected
from hpcops.rundir import (
    BadMarker,
    StartMarker,
    parse_exit_marker,
    parse_start_marker,
)
from hpcops.slurm.backend import SlurmLimited
from hpcops.slurm.parse import (
    FinishedJob,
    QueueEntry,
)
from hpcops.states import RunState
from hpcops.store import AttemptEnd, Run

# The actor of every change the daemon makes on its own (events table, `hpcops history`).
DAEMON = "daemon"
# After Slurm refused a submission for a full association/QOS limit, try again this much later,
# doubling up to LIMIT_RETRY_MAX_S: each try costs an sbatch RPC.
LIMIT_RETRY_S = 30.0
LIMIT_RETRY_MAX_S = 600.0
# In Slurm, not started yet: the start marker or squeue moves these to RUNNING.
NOT_STARTED = (RunState.PENDING, RunState.STAGING)


@dataclass(frozen=True)
class Outcome:
    """One change to record for a run, and what the engine does after recording it.

    `to` None changes fields only. With `expect`, the change holds only if the run is still in
    one of those states (someone else may have moved it first). `fields` are the run's columns
    to write, `reason` among them when the decision sets it (None there clears it)."""

    to: RunState | None
    expect: tuple[RunState, ...] | None = None
    note: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    # What next: the run left Slurm for good (drop its bookkeeping, release into its room) ...
    forget: bool = False
    # ... something release depends on changed (plan again now, and wake the loop) ...
    changed: bool = False
    # ... one fewer job pending in Slurm (plan again at the next tick) ...
    replan: bool = False
    # ... its end was seen: ask sacct at the next tick, not after the back-off ...
    ask_sacct_now: bool = False
    # ... the markers speak for an attempt Slurm took back: remove them ...
    clear_markers: bool = False
    # ... a staging job the run no longer needs: scancel it ...
    drop_staging_job: str | None = None
    # ... Slurm refused it for a full limit: not before this many seconds.
    retry_in_s: float | None = None
    # The run's current attempt ended so: its Attempt row, written with the change (the engine
    # fills it from the outcome for any end of a run that has a job: `attempt_end`).
    ended: AttemptEnd | None = None

    @property
    def reason(self) -> str | None:
        return self.fields.get("reason")


# --- 1. markers, read from the run directory ---------------------------------------------------


@dataclass(frozen=True)
class MarkerTexts:
    """The run directory's markers as read (None: absent, or not asked for)."""

    staged: str | None = None
    started: str | None = None
    exit: str | None = None


def on_markers(run: Run, texts: MarkerTexts, now: float) -> list[Outcome]:
    """What the markers a run's jobs wrote say, in the order to record it: its data is staged,
    its job started, its job ended (the final state waits for sacct)."""
    state = RunState(run.state)
    outcomes: list[Outcome] = []
    if state is RunState.STAGING:
        # "<exit code> <epoch> <token>": only this attempt's stager speaks for it. A failed
        # staging: Slurm ends the run's job (kill-on-invalid-dep), and `settling.finish` says why.
        staged = (texts.staged or "").split()
        if staged[:1] == ["0"] and staged[2:3] == [run.token]:
            outcomes.append(
                Outcome(
                    RunState.PENDING,
                    expect=(RunState.STAGING,),
                    note=f"data staged (job {run.staging_job_id})",
                )
            )
    if state in NOT_STARTED:
        started = None
        try:
            started = parse_start_marker(texts.started) if texts.started is not None else None
        except BadMarker as exc:
            outcomes += _bad_marker(run, "start", exc)
        if started is not None and started.slurm_job_id == run.slurm_job_id:
            outcomes.append(
                Outcome(
                    RunState.RUNNING,
                    expect=NOT_STARTED,
                    note=f"started on {started.hostname}",
                    fields={"started_at": started.started_at},
                    replan=True,  # one fewer pending: the window has room
                )
            )
    if run.marker_exit_code is None:
        ended = None
        try:
            ended = parse_exit_marker(texts.exit) if texts.exit is not None else None
        except BadMarker as exc:
            outcomes += _bad_marker(run, "exit", exc)
        if ended is not None:
            outcomes.append(
                Outcome(
                    None,
                    fields={
                        "end_seen_at": run.end_seen_at or now,
                        "marker_exit_code": ended.exit_code,
                    },
                    ask_sacct_now=True,
                )
            )
    return outcomes


def _bad_marker(run: Run, which: str, exc: BadMarker) -> list[Outcome]:
    """A marker the job garbled is that run's problem: its reason says so (once), and the job
    is followed through squeue and sacct as if it had written none."""
    reason = f"ignored its {which} marker: {exc.message}"
    if run.reason == reason:
        return []
    # A note too, so that history keeps it once the final state's reason replaces this one.
    return [Outcome(None, note=reason, fields={"reason": reason})]


# --- 2. the safety net: squeue -------------------------------------------------------------------


def on_queue_row(run: Run, entry: QueueEntry | None, now: float) -> Outcome | None:
    """What squeue's row for a run's job (None: the job is not listed) says, for a run whose
    job id is known. None: nothing to record."""
    if entry is None:
        if run.end_seen_at is None:
            # Gone from squeue without an end marker: cancelled, timed out or lost. sacct will
            # say which.
            return Outcome(None, fields={"end_seen_at": now}, ask_sacct_now=True)
        return None
    fields: dict[str, Any] = {}
    if entry.reason != (run.reason or "") and entry.reason not in ("", "None"):
        fields["reason"] = entry.reason
    if entry.state is RunState.RUNNING and RunState(run.state) in NOT_STARTED:
        return Outcome(
            RunState.RUNNING,
            expect=NOT_STARTED,
            note="running (squeue)",
            fields={"started_at": entry.started_at or now, **fields},
        )
    if entry.state is RunState.PENDING and run.state == RunState.RUNNING:
        # Slurm took the job back without its script ending it (a lost node: no exit marker),
        # and queued it again under the same id.
        return back_to_pending(run, "pending again in squeue", entry.reason)
    return Outcome(None, fields=fields) if fields else None


def adopt(
    run: Run,
    job_id: str,
    state: RunState,
    submitted_at: float | None,
    now: float,
    *,
    staging_job: str | None = None,
) -> Outcome:
    """A SUBMITTING run whose job Slurm knows by the run's token (found after a crash): follow
    that job, in the state Slurm has it in."""
    live: RunState = state if state in (RunState.PENDING, RunState.RUNNING) else RunState.PENDING
    if live is RunState.PENDING and staging_job is not None:
        live = RunState.STAGING  # the staged marker moves it on, or `settling.finish` says why not
    fields: dict[str, Any] = {
        "slurm_job_id": job_id,
        "submitted_at": submitted_at or now,
        "staging_job_id": staging_job,
    }
    if state.is_terminal:
        fields["end_seen_at"] = now
    return Outcome(
        live,
        expect=(RunState.SUBMITTING,),
        note=f"adopted Slurm job {job_id} by token {run.token}",
        fields=fields,
    )


def stage_token(token: str | None) -> str:
    """The token a run's staging job carries: never taken for the run's own job."""
    return f"{token}:stage"


def settle_orphan(
    run: Run,
    *,
    finished: FinishedJob | None,
    started: StartMarker | None,
    stager_id: str | None,
    live_stager_id: str | None,
    now: float,
    grace_s: float,
) -> Outcome | None:
    """A SUBMITTING run that squeue does not know by its token: finished already (sacct's
    record `finished`, or the job's own start marker `started`), or never submitted. None:
    too early to tell (an sbatch orphaned by a crash may still return)."""
    if finished is not None:
        return adopt(run, finished.job_id, finished.state, None, now, staging_job=stager_id)
    if started is not None:
        # The job ran (it wrote its start marker, with its id) even though neither squeue nor
        # sacct could name it by token: adopt it, never submit it twice.
        return adopt(run, started.slurm_job_id, RunState.RUNNING, None, now)
    if now - (run.claimed_at or run.created_at) <= grace_s:
        return None
    never = (
        f"no Slurm job carries token {run.token} {grace_s:.0f} s after the claim; "
        "the submission never reached Slurm"
    )
    # Its staging job went in, the run's own job did not: the stager is not needed, and must
    # not write into the next attempt's directory.
    if run.cancel_requested_by:
        return dataclasses.replace(
            cancel_unsubmitted(run, f"after the check by token ({never})", now),
            drop_staging_job=live_stager_id,
        )
    return Outcome(
        RunState.QUEUED,
        expect=(RunState.SUBMITTING,),
        note=f"{never}, queued again",
        fields={"token": None},
        drop_staging_job=live_stager_id,
    )


def cancel_unsubmitted(run: Run, when: str, now: float) -> Outcome:
    """A cancel that arrived while the run was SUBMITTING, honoured before any job exists."""
    return Outcome(
        RunState.CANCELLED,
        expect=(RunState.SUBMITTING,),
        note=f"cancelled {when}, as {run.cancel_requested_by} asked",
        fields={"ended_at": now},
        changed=True,
    )


def live_entry(entries: list[QueueEntry], job_id: str | None) -> QueueEntry | None:
    """The job's live entry in squeue's rows, if Slurm still has it pending or running."""
    return next(
        (
            e
            for e in entries
            if e.job_id == job_id and e.state in (RunState.PENDING, RunState.RUNNING)
        ),
        None,
    )


def back_to_pending(run: Run, seen: str, slurm_reason: str) -> Outcome:
    """Slurm took the job back and queued it again under the same id: follow it. The markers
    speak for the attempt Slurm took back; the next attempt writes its own."""
    return Outcome(
        RunState.PENDING,
        expect=(RunState(run.state),),
        note=f"Slurm requeued job {run.slurm_job_id} ({seen})",
        fields={
            "reason": slurm_reason if slurm_reason not in ("", "None") else "requeued",
            "end_seen_at": None,
            "marker_exit_code": None,
            # A restart within the attempt (the same job id), not a new attempt.
            "restarts": run.restarts + 1,
        },
        clear_markers=True,
        forget=True,
    )


# --- 3. submission -------------------------------------------------------------------------------


def unsubmittable(problem: str, now: float) -> Outcome:
    """A queued run that can no longer be rendered or fits no partition (the cluster or the
    lab's templates changed since it was queued): it fails, before any claim."""
    return Outcome(
        RunState.FAILED,
        expect=(RunState.QUEUED,),
        note=problem,
        fields={"reason": problem, "ended_at": now},
    )


def submitted(job_id: str, staging_job: str | None, now: float) -> Outcome:
    """sbatch answered with the run's job id (and its staging job's, when it stages data)."""
    return Outcome(
        RunState.STAGING if staging_job is not None else RunState.PENDING,
        expect=(RunState.SUBMITTING,),
        note=f"Slurm job {job_id}"
        + (f" after staging job {staging_job}" if staging_job is not None else ""),
        fields={"slurm_job_id": job_id, "staging_job_id": staging_job, "submitted_at": now},
    )


def sbatch_failed(
    run: Run,
    error: SlurmError,
    now: float,
    *,
    refusals: int,
    staging_job: str | None,
) -> Outcome | None:
    """What sbatch's error means for a SUBMITTING run: wait (SlurmLimited: a full association
    or QOS limit), fail (SlurmRejected), or stay SUBMITTING. `run` as it is now (a cancel may
    have come meanwhile); `refusals`: limit refusals in a row, this one included.

    None: Slurm did not answer (SlurmUnreachable). The request may have reached slurmctld, so the
    run stays SUBMITTING and is settled by token once Slurm answers again."""
    if not isinstance(error, SlurmRejected):
        return None
    evidence = error.stderr.strip()
    if isinstance(error, SlurmLimited):
        if run.cancel_requested_by:
            return dataclasses.replace(
                cancel_unsubmitted(run, "after Slurm refused it", now),
                drop_staging_job=staging_job,
            )
        # A limit means wait, not fail (docs/design.md, decision 5): this run waits, doubling, while
        # the others may still go.
        return Outcome(
            RunState.QUEUED,
            expect=(RunState.SUBMITTING,),
            note=f"waiting: {evidence or error.message}",
            fields={"token": None, "reason": f"Slurm limit: {evidence or error.message}"},
            drop_staging_job=staging_job,
            retry_in_s=backoff_s(refusals, first_s=LIMIT_RETRY_S, max_s=LIMIT_RETRY_MAX_S),
        )
    return Outcome(
        RunState.FAILED,
        expect=(RunState.SUBMITTING,),
        note=f"Slurm refused the job: {evidence}",
        fields={"ended_at": now, "reason": f"Slurm refused the job: {evidence}"},
        drop_staging_job=staging_job,
    )
