"""A run's attempts as the API shows them: one Slurm job each, numbered 1, 2, ...

An ended attempt is a row the engine wrote (`Store.attempts(run_id)`, in the same transaction as
the run's change); the attempt a run is on now (queued again, in Slurm, running) has no row yet
and is shown from the run itself, marked `"current": true`. A run that ended before attempts
were recorded has no row at all: its one attempt is shown from the run too. A Slurm requeue (the
same job id, sacct's `Restarts` up by one) stays within its attempt and counts in `restarts`.

The ended attempts are `Store.attempts(run_id)`; how many a run has is its own
`attempts_ended`, so `ls` reads no attempt rows at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpcops import retries
from hpcops.states import IN_SLURM_STATES, RunState
from hpcops.store import Attempt, Run


def attempt_number(run: Run) -> int:
    """The attempt the run is on (or ended with)."""
    if RunState(run.state).is_terminal:
        return max(1, run.attempts_ended)
    return retries.attempt_number(run)


def attempts_view(run: Run, rows: Sequence[Attempt]) -> list[dict[str, Any]]:
    """Every attempt of the run, by number, the one it is on now last."""
    from hpcops.api.views import iso

    views = [
        {
            "number": row.number,
            "slurm_job_id": row.slurm_job_id,
            "state": str(row.state),
            "slurm_state": row.slurm_state,
            "submitted_at": iso(row.submitted_at),
            "started_at": iso(row.started_at),
            "ended_at": iso(row.ended_at),
            "elapsed_s": row.elapsed_s,
            "restarts": row.restarts,
            "exit_code": row.exit_code,
            "signal": row.signal,
            "reason": row.reason,
            "total_cpu_s": row.total_cpu_s,
            "alloc_cpus": row.alloc_cpus,
            "alloc_gpus": row.alloc_gpus,
            "max_rss_bytes": row.max_rss_bytes,
            "current": False,
        }
        for row in rows
    ]
    state = RunState(run.state)
    jobs = {row.slurm_job_id for row in rows if row.slurm_job_id}
    if state.is_terminal:
        # Its last attempt has a row, unless the run ended before attempts were recorded.
        if rows and not (run.slurm_job_id and run.slurm_job_id not in jobs):
            return views
    elif state in IN_SLURM_STATES and run.slurm_job_id in jobs:
        return views  # that job ended as the run was read: its row is the last
    ended = state.is_terminal
    waiting = state in (RunState.QUEUED, RunState.HELD)
    running = ended or state is RunState.RUNNING
    views.append(
        {
            # Queued again, the run still carries its last job's figures: none are this one's.
            "number": len(rows) + 1,
            "slurm_job_id": None if waiting else run.slurm_job_id,
            "state": str(run.state),
            "slurm_state": run.slurm_state if ended else None,
            "submitted_at": None if waiting else iso(run.submitted_at),
            "started_at": iso(run.started_at) if running else None,
            "ended_at": iso(run.ended_at) if ended else None,
            "elapsed_s": run.elapsed_s if ended else None,
            "restarts": None,
            "exit_code": run.exit_code if ended else None,
            "signal": run.signal if ended else None,
            "reason": run.reason,
            "total_cpu_s": run.total_cpu_s if ended else None,
            "alloc_cpus": run.alloc_cpus if ended else None,
            "alloc_gpus": run.alloc_gpus if ended else None,
            "max_rss_bytes": run.max_rss_bytes if ended else None,
            "current": not ended,
        }
    )
    return views
