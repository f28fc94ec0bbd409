"""Runs and events as JSON: the `--json` interface that scripts rely on. Keep it stable: add keys,
never rename or remove them. Times are ISO 8601 in UTC; durations in seconds; sizes in bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hpcops.store import Event, Run


def iso(epoch: float | None, timespec: str = "seconds") -> str | None:
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, UTC).isoformat(timespec=timespec)
    return moment.replace("+00:00", "Z")


def run_view(run: Run, *, detail: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": run.id,
        "name": run.name,
        "experiment": run.experiment,
        "owner": run.owner,
        "priority": run.priority,
        "state": run.state,
        "slurm_job_id": run.slurm_job_id,
        "partition": run.partition,
        "cpus": run.cpus,
        "gpus": run.gpus,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "reason": run.reason,
        "created_at": iso(run.created_at),
        "submitted_at": iso(run.submitted_at),
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
        "elapsed_s": run.elapsed_s,
        "total_cpu_s": run.total_cpu_s,
        "max_rss_bytes": run.max_rss_bytes,
        "attempt": run.attempt,
        "cancel_requested_by": run.cancel_requested_by,
    }
    if detail:
        view.update(
            {
                "run_dir": run.run_dir or None,
                "spec_hash": run.spec_hash,
                "spec": run.spec_yaml,
                "stderr_tail": run.stderr_tail,
                "token": run.token,
            }
        )
    return view


def event_view(event: Event) -> dict[str, Any]:
    return {
        # Events are an audit log: milliseconds keep their order readable within a second.
        "at": iso(event.at, "milliseconds"),
        "actor": event.actor,
        "from": event.from_state,
        "to": event.to_state,
        "reason": event.reason,
    }
