"""Runs, sweeps and events as JSON: the `--json` interface that scripts rely on. Keep it stable: add
keys, never rename or remove them. Times are ISO 8601 in UTC; durations in seconds; sizes in bytes.

A listing may mix runs, sweeps and pipelines: "type" says which ("run", "sweep" or "pipeline"). A
run's "id" is its number, a sweep's is its `s<N>` (and "sweep_id" its number), a pipeline's its
`p<N>` (and "pipeline_id" its number)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hpcops.api.sweeps import Scored, best, bucket, finite, progress, ranked, summary_state
from hpcops.cadence import cadence
from hpcops.data.usage import VersionUse
from hpcops.errors import HpcopsError
from hpcops.pipeline import PipelineDef, pipeline_state, topological_order
from hpcops.policy import Active, Limits, Quotas
from hpcops.states import RunState
from hpcops.store import Audit, Event, Firing, Pipeline, PipelineStep, Run, Schedule, Sweep
from hpcops.yamlio import read_yaml


def iso(epoch: float | None, timespec: str = "seconds") -> str | None:
    if epoch is None:
        return None
    try:
        moment = datetime.fromtimestamp(epoch, UTC).isoformat(timespec=timespec)
    except (OverflowError, OSError, ValueError):
        return None  # no clock reading (a value from before the markers were bounded)
    return moment.replace("+00:00", "Z")


def sweep_ref(sweep_id: int | None) -> str | None:
    """A sweep's id as users type it: `s7`."""
    return None if sweep_id is None else f"s{sweep_id}"


def pipeline_ref(pipeline_id: int | None) -> str | None:
    """A pipeline's id as users type it: `p3`."""
    return None if pipeline_id is None else f"p{pipeline_id}"


def run_view(run: Run, *, detail: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "type": "run",
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
        # The exact code (specs with code: only): repo as given, the commit named, the commit
        # checked out (a snapshot on top of it when dirty). null without code.
        "code": (
            {
                "repo": run.code_repo,
                "commit": run.code_commit,
                "checkout": run.code_checkout,
                "dirty": run.code_dirty,
            }
            if run.code_commit
            else None
        ),
        "schedule_id": run.schedule_id,
        "firing_id": run.firing_id,
        "mlflow_run_id": run.mlflow_run_id,
        "staging_job_id": run.staging_job_id,
        # A point of a sweep: the sweep ("s7"), the point's index, its objective (once known).
        "sweep": sweep_ref(run.sweep_id),
        "sweep_index": run.sweep_index,
        "objective": finite(run.objective),
        # A run of a pipeline's step: the pipeline ("p3") and the step's name.
        "pipeline": pipeline_ref(run.pipeline_id),
        "pipeline_step": run.pipeline_step,
    }
    # The data versions (specs with data: only): path, repo, rev, md5, size, nfiles, dest, env.
    view["data"] = json.loads(run.data_json) if run.data_json else []
    if detail:
        view.update(
            {
                "run_dir": run.run_dir or None,
                "spec_hash": run.spec_hash,
                "spec": run.spec_yaml,
                "stderr_tail": run.stderr_tail,
                # No "token": a live submission token is how the daemon recognises its job after
                # a crash, and is not for members to read (a job carrying it could be adopted).
            }
        )
    return view


def sweep_view(
    sweep: Sweep, counts: Mapping[str, int], *, points: Sequence[Run] | None = None
) -> dict[str, Any]:
    """A sweep for `ls` (one row) and, given its runs (Store.sweep_runs), `show`: its definition,
    its points' counts by state, progress and summary state (hpcops/api/sweeps.py), the best
    point; with `points`, each point's latest run, ranked by the objective (best first) when the
    sweep has one, else by index."""
    mode = sweep.objective_mode
    view: dict[str, Any] = {
        "type": "sweep",
        "id": sweep_ref(sweep.id),
        "sweep_id": sweep.id,
        "name": sweep.name,
        "experiment": sweep.experiment,
        "owner": sweep.owner,
        "state": summary_state(counts).value,
        "kind": sweep.kind,
        "n_points": sweep.n_points,
        "counts": dict(sorted(counts.items())),
        "progress": progress(counts),
        "objective": (
            {"metric": sweep.objective_metric, "mode": mode} if sweep.objective_metric else None
        ),
        "best": (
            {"run_id": sweep.best_run_id, "value": finite(sweep.best_value)}
            if sweep.best_run_id is not None
            else None
        ),
        "max_parallel": sweep.max_parallel,
        "mlflow_run_id": sweep.mlflow_run_id,
        "rerun_of": sweep_ref(sweep.rerun_of_sweep),
        "created_at": iso(sweep.created_at),
        "updated_at": iso(sweep.updated_at),
        "closed_at": iso(sweep.closed_at),
    }
    if points is None:
        return view
    values = _points_params(sweep)
    latest: dict[int, Run] = {}
    earlier: dict[int, list[int]] = {}
    for run in points:  # by index, a point's latest run last
        index = run.sweep_index if run.sweep_index is not None else -1
        previous = latest.get(index)
        if previous is not None and previous.id is not None:
            earlier.setdefault(index, []).append(previous.id)
        latest[index] = run
    order = ranked(
        (Scored(r.id or 0, i, finite(r.objective)) for i, r in latest.items()),
        mode if sweep.objective_metric else None,
    )
    rows = [_point_view(latest[p.index], values, earlier.get(p.index, [])) for p in order]
    if view["best"] is None and sweep.objective_metric:
        top = best(order, mode)
        if top is not None:
            view["best"] = {"run_id": top.run_id, "value": top.value}
    if view["best"] is not None:
        found = next((r for r in points if r.id == view["best"]["run_id"]), None)
        best_index = found.sweep_index if found is not None else None
        view["best"]["index"] = best_index
        view["best"]["params"] = _params_of(values, best_index)
    view.update(
        {
            "seed": _seed(sweep.spec_yaml) if sweep.kind == "random" else None,
            "mlflow_experiment_id": sweep.mlflow_experiment_id,
            "spec": sweep.spec_yaml,
            "points": rows,
        }
    )
    return view


@dataclass(frozen=True)
class StepRecords:
    """What a pipeline's `show` reads about its steps: their current runs by id, and their
    sweeps with each sweep's points' counts by state (Store.sweep_counts)."""

    runs: Mapping[int, Run]
    sweeps: Mapping[int, Sweep]
    counts: Mapping[int, Mapping[str, int]]
    points: Mapping[int, Sequence[Run]]


def pipeline_view(
    pipeline: Pipeline,
    definition: PipelineDef,
    steps: Sequence[PipelineStep],
    states: Mapping[str, RunState],
    *,
    records: StepRecords | None = None,
) -> dict[str, Any]:
    """A pipeline for `ls` (one row: each step's kind, state and run or sweep) and, given its
    steps' records, `show`: what each step waits for, takes and runs, and why a step that did
    not complete ended. Steps in topological order (the file's among steps free together); the
    state by the pipeline's rules (hpcops/pipeline/progress.py) over `states`
    (engine.pipeline_step_states)."""
    graph = definition.graph
    order = topological_order(graph)
    by_name = {step.name: step for step in steps}
    view: dict[str, Any] = {
        "type": "pipeline",
        "id": pipeline_ref(pipeline.id),
        "pipeline_id": pipeline.id,
        "name": pipeline.name,
        "experiment": pipeline.experiment,
        "owner": pipeline.owner,
        "state": pipeline_state(list(graph), states).value,
        "n_steps": len(order),
        "steps": [
            _step_row(by_name[name], states.get(name, RunState.UNKNOWN))
            for name in order
            if name in by_name
        ],
        "outcome": pipeline.outcome,
        "schedule_id": pipeline.schedule_id,
        "firing_id": pipeline.firing_id,
        "mlflow_run_id": pipeline.mlflow_run_id,
        "created_at": iso(pipeline.created_at),
        "updated_at": iso(pipeline.updated_at),
        "ended_at": iso(pipeline.ended_at),
    }
    if records is None:
        return view
    for row in view["steps"]:
        _step_detail(row, definition, by_name[row["name"]], records)
    view.update(
        {
            "source": pipeline.source,
            "mlflow_experiment_id": pipeline.mlflow_experiment_id,
            "closed_at": iso(pipeline.closed_at),
        }
    )
    return view


def _step_row(step: PipelineStep, state: RunState) -> dict[str, Any]:
    return {
        "name": step.name,
        "kind": step.kind,
        "state": state.value,
        "run_id": step.run_id,
        "sweep": sweep_ref(step.sweep_id),
    }


def _step_detail(
    row: dict[str, Any], definition: PipelineDef, step: PipelineStep, records: StepRecords
) -> None:
    """`show`'s part of a step: its definition, its run's or sweep's figures, why it ended."""
    spec = definition.steps[step.name]
    promotion = spec.promotion
    row.update(
        {
            "after": list(spec.after),
            "inputs": dict(spec.inputs),
            "spec": spec.spec,
            "opened_at": iso(step.opened_at),
            "ended_at": iso(step.ended_at),
            "reason": step.reason,
        }
    )
    run = records.runs.get(step.run_id) if step.run_id is not None else None
    if run is not None:
        row.update(
            {
                "slurm_job_id": run.slurm_job_id,
                "exit_code": run.exit_code,
                "elapsed_s": run.elapsed_s,
                "mlflow_run_id": run.mlflow_run_id,
                "ended_at": iso(run.ended_at),
                "reason": _ended_reason(run),
            }
        )
    sweep = records.sweeps.get(step.sweep_id) if step.sweep_id is not None else None
    if sweep is not None:
        view = sweep_view(sweep, records.counts.get(sweep.id or 0, {}))
        row.update(
            {
                "n_points": view["n_points"],
                "progress": view["progress"],
                "objective": view["objective"],
                "best": view["best"],
                "mlflow_run_id": sweep.mlflow_run_id,
                "reason": _points_reason(records.points.get(sweep.id or 0, ())),
            }
        )
    if promotion is not None:
        row["register"] = promotion.model_dump(mode="json")
        row["model_run_id"] = step.model_run_id
        row["result"] = _result(step.result_json)


def _ended_reason(run: Run) -> str | None:
    """Why a run ended otherwise than COMPLETED (None while it has not, or when it did)."""
    return run.reason if bucket(run.state) in ("failed", "cancelled") else None


def _points_reason(points: Sequence[Run]) -> str | None:
    """Why a sweep step's points ended otherwise than COMPLETED: one reason when they share it
    (a doomed step's: "waits for prepare, which FAILED"), else the first point's, named."""
    latest = {run.sweep_index: run for run in points}  # by index, a point's latest run last
    found = [(i, _ended_reason(r)) for i, r in sorted(latest.items(), key=lambda x: x[0] or 0)]
    reasons = [(i, why) for i, why in found if why]
    if not reasons:
        return None
    if len({why for _, why in reasons}) == 1 and len(reasons) == len(found):
        return reasons[0][1]
    index, why = reasons[0]
    return f"point {index}: {why}"


def _result(result_json: str | None) -> Any:
    """A register step's result (the promotion, as the tracker recorded it), or None."""
    if not result_json:
        return None
    try:
        return json.loads(result_json)
    except ValueError:
        return None


def _point_view(run: Run, values: list[Any], earlier: list[int]) -> dict[str, Any]:
    return {
        "index": run.sweep_index,
        "run_id": run.id,
        "name": run.name,
        "params": _params_of(values, run.sweep_index),
        "state": run.state,
        "objective": finite(run.objective),
        "slurm_job_id": run.slurm_job_id,
        "exit_code": run.exit_code,
        "elapsed_s": run.elapsed_s,
        "earlier_runs": earlier,  # the point's runs before its latest (reruns of the point)
    }


def _points_params(sweep: Sweep) -> list[Any]:
    try:
        values = json.loads(sweep.points_json)
    except ValueError:
        return []
    return values if isinstance(values, list) else []


def _params_of(values: list[Any], index: int | None) -> dict[str, Any]:
    if index is None or not 0 <= index < len(values) or not isinstance(values[index], dict):
        return {}
    return dict(values[index])


def _seed(spec_yaml: str) -> int | None:
    """A random sweep's seed, as intake pinned it in the stored spec."""
    try:
        spec = read_yaml(spec_yaml)
    except HpcopsError:
        return None
    sweep = spec.get("sweep") if isinstance(spec, dict) else None
    search = sweep.get("random") if isinstance(sweep, dict) else None
    seed = search.get("seed") if isinstance(search, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def event_view(event: Event) -> dict[str, Any]:
    return {
        # Events are an audit log: milliseconds keep their order readable within a second.
        "at": iso(event.at, "milliseconds"),
        "actor": event.actor,
        "from": event.from_state,
        "to": event.to_state,
        "reason": event.reason,
    }


def audit_view(entry: Audit) -> dict[str, Any]:
    return {
        "at": iso(entry.at, "milliseconds"),
        "actor": entry.actor,
        "role": entry.role,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
        "allowed": entry.allowed,
        "detail": entry.detail,
    }


def quota_view(
    quotas: Quotas, active: Sequence[Active], usage: Mapping[str, float]
) -> dict[str, Any]:
    """Effective quotas (config plus leads' overrides) beside what is in use now."""

    def limits(value: Limits) -> dict[str, int | None]:
        return {"jobs": value.jobs, "cpus": value.cpus, "gpus": value.gpus}

    def in_use(jobs: Sequence[Active]) -> dict[str, int]:
        return {
            "jobs": len(jobs),
            "cpus": sum(j.cpus for j in jobs),
            "gpus": sum(j.gpus for j in jobs),
        }

    owners = sorted({j.owner for j in active} | set(quotas.users))
    partitions = sorted({j.partition or "" for j in active} | set(quotas.partitions))
    return {
        "lab": {"limit": limits(quotas.lab), "in_use": in_use(active)},
        "per_user": {"limit": limits(quotas.per_user)},
        "users": {
            owner: {
                "limit": limits(quotas.for_user(owner)),
                "in_use": in_use([j for j in active if j.owner == owner]),
                "usage": round(usage.get(owner, 0.0), 3),
            }
            for owner in owners
        },
        "partitions": {
            name: {
                "limit": limits(quotas.partitions.get(name, Limits())),
                "in_use": in_use([j for j in active if (j.partition or "") == name]),
            }
            for name in partitions
            if name
        },
        "fair_share_usage": {k: round(v, 3) for k, v in sorted(usage.items())},
    }


def firing_view(firing: Firing, run_state: str | None) -> dict[str, Any]:
    return {
        "id": firing.id,
        "schedule_id": firing.schedule_id,
        "scheduled_for": iso(firing.scheduled_for),
        "fired_at": iso(firing.fired_at),
        "kind": firing.kind,
        "actor": firing.actor,
        "outcome": firing.outcome,
        "reason": firing.reason or None,
        "run_id": firing.run_id,
        "pipeline_id": firing.pipeline_id,
        # What it queued, as `hpcops show` takes it: a run id, or a pipeline's p<id>.
        "queued": f"p{firing.pipeline_id}"
        if firing.pipeline_id is not None
        else (str(firing.run_id) if firing.run_id is not None else None),
        # The state now of what it queued (a pipeline: RUNNING until every step ended).
        "run_state": run_state,
        # The data versions it was for (path and md5 of each target), when the spec has data.
        "data": [
            {"path": item["path"], "md5": item["md5"]} for item in json.loads(firing.data_json)
        ]
        if firing.data_json
        else None,
    }


def schedule_view(
    schedule: Schedule,
    *,
    next_fire_at: float | None,
    problem: str | None,
    last_firing: tuple[Firing, str | None] | None,
) -> dict[str, Any]:
    if schedule.removed_at is not None:
        status = "removed"
    elif problem is not None or schedule.last_check_ok is False:
        status = "broken"
    else:
        status = "paused" if schedule.paused else "active"
    return {
        "id": schedule.id,
        "name": schedule.name,
        "owner": schedule.owner,
        "spec_name": schedule.spec_name,
        "kind": schedule.kind,  # what each firing queues: "spec" (a run) or "pipeline"
        "status": status,
        "cron": schedule.cron,
        "every_s": schedule.every_s,
        "timezone": schedule.timezone,
        "cadence": cadence(
            schedule.cron,
            schedule.every_s,
            schedule.timezone,
            schedule.check_every_s if schedule.on_data_change else None,
        ),
        "on_data_change": schedule.on_data_change,
        "check_every_s": schedule.check_every_s,
        "last_check": None
        if schedule.last_checked_at is None
        else {
            "at": iso(schedule.last_checked_at),
            "ok": schedule.last_check_ok,
            "summary": (schedule.last_check or "").partition(": ")[0],
            "result": schedule.last_check,
        },
        "catch_up": schedule.catch_up,
        "catch_up_grace_s": schedule.catch_up_grace_s,
        "allow_overlap": schedule.allow_overlap,
        "paused": schedule.paused,
        "next_fire_at": iso(next_fire_at),
        "problem": problem,
        "last_error": schedule.last_error,
        "last_firing": firing_view(*last_firing) if last_firing else None,
        "created_at": iso(schedule.created_at),
        "updated_at": iso(schedule.updated_at),
        "removed_at": iso(schedule.removed_at),
        "removed_by": schedule.removed_by,
    }


def version_view(use: VersionUse, missing: Sequence[object] | None) -> dict[str, Any]:
    """A data version for `cache ls`; `missing` is what the cache lacks of it (None: even the
    manifest)."""
    return {
        "md5": use.md5,
        "paths": sorted(use.paths),
        "repos": sorted(use.repos),
        "size": use.size,
        "nfiles": use.nfiles,
        "runs": sorted(use.runs),
        "last_used": iso(use.last_used),
        "needed": use.needed,
        # complete: every object is in the cache; partial: some; absent: not even the manifest
        "in_cache": "absent" if missing is None else ("complete" if not missing else "partial"),
    }
