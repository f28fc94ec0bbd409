"""Retries (a spec's `retry:`), decided on plain data: when an attempt's job ends,
`retry_or_end` decides whether the run ends with it or goes back to QUEUED for its next attempt;
either way the ended attempt is recorded (`Outcome.ended`, an Attempt row in the same transaction
as the run's change). An attempt is one Slurm job of a run; a Slurm requeue (the same job id)
stays within its attempt and counts in its `restarts`.

Like hpcops/lifecycle.py, nothing here reads a file, calls Slurm or writes the database
(tests/unit/test_lifecycle_retries.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

from hpcops.lifecycle import Outcome
from hpcops.spec import Spec
from hpcops.states import RunState
from hpcops.store import Attempt, AttemptEnd, Run

# An attempt that ends this soon after its start (or within half the run's time limit, if that is
# shorter) "ended at once": two in a row in the same state stop the retries.
FAST_FAIL_S = 60.0
# The endings the job itself causes, the only ones two quick ones in a row stop the retries for: a
# script that fails at once will fail at once again. PREEMPTED and NODE_FAIL are the cluster
# taking the job away, which says nothing of the next attempt (two preemptions within a minute
# must not end a run with attempts left). TIMEOUT is left out as moot: an attempt ends TIMEOUT at
# its time limit, never within half of it.
FAST_FAIL_STATES = frozenset({RunState.FAILED, RunState.OUT_OF_MEMORY})
_NEXT_ATTEMPT_CLEARS: dict[str, Any] = {
    # The ended attempt's job and figures (kept in its Attempt row); the next claim sets a token.
    "token": None,
    "slurm_job_id": None,
    "staging_job_id": None,
    "array_task": None,  # a point's next attempt is a plain single job, never an array's task
    "claimed_at": None,
    "submitted_at": None,
    "started_at": None,
    "ended_at": None,
    "exit_code": None,
    "signal": None,
    "elapsed_s": None,
    "total_cpu_s": None,
    "max_rss_bytes": None,
    "stderr_tail": None,
    "end_seen_at": None,
    "marker_exit_code": None,
    "slurm_state": None,
    "alloc_cpus": None,
    "alloc_gpus": None,
    "restarts": 0,
}


@dataclass(frozen=True)
class RetryRules:
    """A run's retry rules: its attempts in all, the states that start the next one, and how
    long to wait before it. The default is one attempt, no retry (a spec without `retry:`)."""

    max_attempts: int = 1
    on: frozenset[RunState] = frozenset()
    backoff_s: float = 0.0

    @classmethod
    def of(cls, spec: Spec) -> RetryRules:
        """The spec's `retry:` block, read here and nowhere else; a spec without one has one
        attempt."""
        policy = spec.retry
        if policy is None:
            return cls()
        return cls(
            max_attempts=policy.max_attempts,
            on=frozenset(RunState(state) for state in policy.on),
            backoff_s=float(policy.backoff_s),
        )


_ATTEMPT_FIELDS = (
    "slurm_state",
    "submitted_at",
    "started_at",
    "ended_at",
    "elapsed_s",
    "exit_code",
    "signal",
    "reason",
    "total_cpu_s",
    "alloc_cpus",
    "alloc_gpus",
    "max_rss_bytes",
    "restarts",
)


def attempt_end(run: Run, outcome: Outcome) -> AttemptEnd:
    """How the run's current attempt ended, as `outcome` (which ends it) says: its fields over
    what the run already knew of the attempt."""
    assert outcome.to is not None
    ended: dict[str, Any] = {
        key: outcome.fields.get(key, getattr(run, key)) for key in _ATTEMPT_FIELDS
    }
    ended["state"] = outcome.to
    return ended  # type: ignore[return-value]  # AttemptEnd's keys, all of them


def attempt_number(run: Run) -> int:
    """The number of the attempt the run is on while it waits or is in Slurm, or, for an ended
    run, of the one `hpcops retry` starts: one after its ended attempts. The one count behind
    HPCOPS_ATTEMPT, the notes, the MLflow tag and `hpcops retry`'s answer, so they agree.

    An ended run with a job but no attempt row ended before attempts were recorded: its job was
    attempt 1 (engine/requests.py `retry` records it). A run that ended without ever getting a
    job (sbatch refused) ended no attempt: its retry is attempt 1 again."""
    ended = run.attempts_ended
    if ended == 0 and run.slurm_job_id is not None and RunState(run.state).is_terminal:
        ended = 1
    return ended + 1


def _ran_s(started_at: float | None, submitted_at: float | None, ended_at: float | None) -> float:
    """How long after its start (its submission, if it never started) an attempt ended."""
    began = started_at or submitted_at
    return max(0.0, ended_at - began) if began and ended_at else 0.0


def fast_fail_s(time_limit_s: float | None) -> float:
    """Within this long of its start an attempt counts as ended at once."""
    return min(FAST_FAIL_S, time_limit_s / 2) if time_limit_s else FAST_FAIL_S


def clock_time(epoch: float) -> str:
    """HH:MM:SS of an epoch, in the daemon's time zone (a reason's "not before")."""
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def next_attempt_fields(now: float, *, keep_place: bool) -> dict[str, Any]:
    """A run's fields as its next attempt is queued: the ended attempt's job and figures
    cleared, and queued now (release order) unless the lab's config says retry.keep_place."""
    fields = dict(_NEXT_ATTEMPT_CLEARS)
    if not keep_place:
        fields["queued_at"] = now
    return fields


def retry_or_end(
    run: Run,
    end: Outcome,
    rules: RetryRules,
    previous: Attempt | None,
    *,
    time_limit_s: float | None,
    now: float,
    keep_place: bool = False,
) -> Outcome:
    """The run's current attempt ended as `end` says (an outcome of `finish`,
    `finish_from_marker`, `vanished`): end the run with it, or queue its next attempt.

    The next attempt is queued when the state is in `rules.on`, attempts are left, no one asked
    to cancel the run, and it does not keep failing the same way at once (this attempt and
    `previous`, the run's last ended attempt, both ended in this state, one of
    FAST_FAIL_STATES, within `fast_fail_s` of their start). Either way the outcome carries the
    ended attempt (`ended`)."""
    ended = end.ended if end.ended is not None else attempt_end(run, end)
    state = end.to
    number = attempt_number(run)
    if state is None or state not in rules.on or run.cancel_requested_by:
        return dataclasses.replace(end, ended=ended)
    quick = fast_fail_s(time_limit_s)
    took = _ran_s(ended.get("started_at"), ended.get("submitted_at"), ended.get("ended_at"))
    stop: str | None = None
    fast = state in FAST_FAIL_STATES and took <= quick
    if fast and previous is not None and previous.state == state:
        earlier = _ran_s(previous.started_at, previous.submitted_at, previous.ended_at)
        if earlier <= quick:
            within = math.ceil(max(took, earlier))
            stop = (
                f"stopped after {number} attempts: each ended {state} within {within} s of starting"
            )
    if stop is None and number >= rules.max_attempts:
        stop = f"ended {state} after {number} attempts (retry.max_attempts)"
    if stop is not None:
        slurm_reason = end.reason
        reason = f"{stop}; {slurm_reason}" if slurm_reason else stop
        return dataclasses.replace(
            end,
            note=f"{end.note}; {stop}" if end.note else stop,
            fields={**end.fields, "reason": reason},
            ended=ended,
        )
    not_before = now + rules.backoff_s if rules.backoff_s > 0 else None
    said = f"attempt {number} of {rules.max_attempts} ended {state}; attempt {number + 1} queued"
    if not_before is not None:
        said += f", not before {clock_time(not_before)}"
    return Outcome(
        RunState.QUEUED,
        expect=end.expect,
        note=f"{end.note}; {said}" if end.note else said,
        fields={
            **next_attempt_fields(now, keep_place=keep_place),
            "reason": said,
            "retry_not_before": not_before,
        },
        forget=True,
        # The ended attempt's markers must never speak for the next one (a crash between the
        # next claim and its sbatch is settled by the run directory's start marker).
        clear_markers=True,
        ended=ended,
    )


def cancelled_before_next_attempt(run: Run, now: float) -> Outcome:
    """A cancel that landed after `retry_or_end` read the run (no cancel yet) and before its next
    attempt was queued: honoured at once, not at the claim, which the back-off may put off for
    up to a day while `ls` shows the run QUEUED."""
    return Outcome(
        RunState.CANCELLED,
        expect=(RunState.QUEUED,),
        note=f"cancelled before its next attempt, as {run.cancel_requested_by} asked",
        fields={"ended_at": now, "retry_not_before": None},
        changed=True,
    )
