"""Releasing a sweep's points into Slurm as job arrays: one `sbatch --array` for the points the
policy released together, where a single run would cost one sbatch each.

Points go into one array when their #SBATCH header agrees (a sweep over resources makes a few
arrays) and their index fits the cluster's MaxArraySize: point i is task i % MaxArraySize of the
array for block i // MaxArraySize, so a point's task id is its index in every sweep smaller
than MaxArraySize.

Crash safety is submit.py's, for all the points at once: the claims (SUBMITTING, the array's
token, each point's task id) commit in one transaction before sbatch, and the token rides in
the array's --comment, so after a crash each point is found by (token, task) in squeue or sacct
(follow.py), and a point Slurm never saw goes back to the queue after submit_grace_s.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hpcops import lifecycle, policy
from hpcops.arrayscript import ARRAY_SCRIPT, ArrayTask, render_array_script
from hpcops.engine.intake import check_cluster_limits, job_context
from hpcops.engine.pipeline_env import job_env
from hpcops.engine.record import record, record_many
from hpcops.engine.state import LoopState, Parts
from hpcops.engine.submit import fault_point, job_tracking, write_staging_plan
from hpcops.errors import InvalidInput, SlurmError
from hpcops.jobcontext import array_dir_path, run_dir_path
from hpcops.lifecycle import DAEMON
from hpcops.render import JobContext, render_script
from hpcops.rundir import RunDir
from hpcops.slurm.arrays import DEFAULT_MAX_ARRAY_SIZE, array_option
from hpcops.spec import Spec, parse_spec
from hpcops.states import RunState
from hpcops.store import Run, RunUpdate, Sweep

if TYPE_CHECKING:
    from hpcops.tracking.worker import JobTracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Point:
    run: Run
    spec: Spec
    task: int
    ctx: JobContext
    script: str
    tracking: JobTracking | None


def submit_points(p: Parts, s: LoopState, runs: Sequence[Run], quotas: policy.Quotas) -> bool:
    """Submit the released points of one sweep; False when releasing should stop this tick."""
    assert runs and runs[0].sweep_id is not None
    sweep = p.store.get_sweep(runs[0].sweep_id)
    size = max_array_size(p, s)
    arrays: dict[tuple[str, int], list[tuple[Run, Spec]]] = {}
    for run in runs:
        try:
            spec = parse_spec(run.spec_yaml, f"run {run.id}")
        except InvalidInput as exc:
            record(p, s, run, lifecycle.unsubmittable(str(exc), p.clock()))
            continue
        index = run.sweep_index or 0
        key = (spec.resources.model_dump_json(), index // size)
        arrays.setdefault(key, []).append((run, spec))
    return all(_submit_array(p, s, sweep, members, size, quotas) for members in arrays.values())


def max_array_size(p: Parts, s: LoopState) -> int:
    """The cluster's MaxArraySize, read once (one RPC) and then kept; Slurm's default while it
    cannot be read."""
    if s.max_array_size is None:
        try:
            s.max_array_size = max(1, p.slurm.max_array_size())
        except SlurmError as exc:
            log.warning("cannot read MaxArraySize, assuming %d: %s", DEFAULT_MAX_ARRAY_SIZE, exc)
            return DEFAULT_MAX_ARRAY_SIZE
    return s.max_array_size


def array_throttle(
    n_tasks: int, cpus: int, gpus: int, limits: Sequence[policy.Limits], max_parallel: int | None
) -> int | None:
    """How many of an array's tasks Slurm may run at once (--array=...%N); None when no limit
    applies to the points.

    The policy released only points that fit the lab's quotas, counted as if all ran, so Slurm
    cannot run more than the quotas allow; the throttle says so again to Slurm itself, from the
    limits alone, so that it holds whatever the daemon does (down, or a lead raising a quota
    later): the sweep's max_parallel, and every job, CPU and GPU limit that applies to a point.
    """
    caps = [] if max_parallel is None else [max_parallel]
    for limit in limits:
        if limit.jobs is not None:
            caps.append(limit.jobs)
        if limit.cpus is not None and cpus > 0:
            caps.append(limit.cpus // cpus)
        if limit.gpus is not None and gpus > 0:
            caps.append(limit.gpus // gpus)
    return max(1, min(n_tasks, *caps)) if caps else None


def _submit_array(
    p: Parts,
    s: LoopState,
    sweep: Sweep,
    members: Sequence[tuple[Run, Spec]],
    size: int,
    quotas: policy.Quotas,
) -> bool:
    token = secrets.token_hex(8)
    first_run, first_spec = members[0]
    try:
        check_cluster_limits(p, s, first_spec, f"sweep s{sweep.id}")
    except InvalidInput as exc:  # the cluster changed since the sweep was queued
        for run, _ in members:
            record(p, s, run, lifecycle.unsubmittable(str(exc), p.clock()))
        return True
    points = [pt for pt in (_prepare(p, s, run, spec, token, size) for run, spec in members) if pt]
    if not points:
        return True
    claims = [
        (pt.run.id or 0, f"attempt {pt.run.attempt + 1}", _claim(p, pt, token)) for pt in points
    ]
    changed = p.store.transition_many(
        claims, RunState.SUBMITTING, actor=DAEMON, expect=(RunState.QUEUED,)
    )
    claimed = {r.id: r for r in changed}
    live: list[tuple[Run, _Point]] = []
    for pt in points:
        if pt.run.id not in claimed:
            continue  # cancelled or changed by a user since it was read
        run = claimed[pt.run.id]
        if run.cancel_requested_by:
            record(p, s, run, lifecycle.cancel_unsubmitted(run, "before sbatch", p.clock()))
            continue
        live.append((run, pt))
    if not live:
        return True
    # A TransportError from here on leaves the points SUBMITTING with no job: the check by token
    # queues them again after submit_grace_s.
    for run, pt in live:
        _write_run_dir(p, run, pt)
    array_dir = array_dir_path(p.placement.run_root, token)
    p.files.make_dir(array_dir)
    tasks = [ArrayTask(pt.task, RunDir(Path(run.run_dir))) for run, pt in live]
    script_path = array_dir / ARRAY_SCRIPT
    p.files.write_file(
        script_path,
        render_array_script(first_spec, live[0][1].ctx, tasks, PurePosixPath(array_dir)),
    )
    owner, partition = first_run.owner, first_run.partition
    limits = [quotas.lab, quotas.for_user(owner), quotas.partitions.get(partition or "")]
    throttle = array_throttle(
        len(tasks),
        first_run.cpus,
        first_run.gpus,
        [lim for lim in limits if lim is not None],
        sweep.max_parallel,
    )
    option = array_option([t.task for t in tasks], throttle)
    fault_point(p, "before_sbatch")
    try:
        array_id = p.slurm.submit(PurePosixPath(script_path), array=option)
        s.ctld_answered = True
    except SlurmError as exc:
        return _refused(p, s, [run for run, _ in live], exc)
    fault_point(p, "after_sbatch")
    now = p.clock()
    record_many(
        p, s, [(run, lifecycle.submitted(f"{array_id}_{pt.task}", None, now)) for run, pt in live]
    )
    log.info(
        "sweep s%s: %d points in Slurm array %s (--array=%s)", sweep.id, len(live), array_id, option
    )
    return True


def _prepare(p: Parts, s: LoopState, run: Run, spec: Spec, token: str, size: int) -> _Point | None:
    """A point's context and script, rendered before the claim (as submit.py does for a run)."""
    assert run.id is not None
    tracking = job_tracking(p, run)
    try:
        ctx = job_context(
            p,
            spec,
            run.id,
            token,
            tracking.env if tracking is not None else (),
            checkout=run.code_checkout,
            pipeline_env=job_env(run),
        )
        if ctx.staging is not None and not ctx.staging.inline:
            # A point stages inline: one staging job per point would undo the array, and the
            # lab's content cache fetches each version once whichever task asks first.
            ctx = dataclasses.replace(ctx, staging=dataclasses.replace(ctx.staging, inline=True))
        script = render_script(spec, ctx, p.config.template_dirs)
    except InvalidInput as exc:
        record(p, s, run, lifecycle.unsubmittable(str(exc), p.clock()))
        return None
    return _Point(run, spec, (run.sweep_index or 0) % size, ctx, script, tracking)


def _claim_note(pt: _Point) -> str:
    return f"attempt {pt.run.attempt + 1}, array task {pt.task}"


def _claim(p: Parts, pt: _Point, token: str) -> RunUpdate:
    """A point's claim, as submit.py's for a run, plus its task id in the array."""
    assert pt.run.id is not None
    claim = RunUpdate(
        token=token,
        attempt=pt.run.attempt + 1,
        claimed_at=p.clock(),
        run_dir=str(run_dir_path(p.placement.run_root, pt.run.id)),
        array_task=pt.task,
    )
    if pt.tracking is not None:
        claim.update(pt.tracking.fields)  # type: ignore[typeddict-item]  # TrackingFields' keys
    return claim


def _write_run_dir(p: Parts, run: Run, pt: _Point) -> None:
    rundir = RunDir(Path(run.run_dir))
    p.files.make_dir(rundir.path)
    p.files.remove_files([*rundir.markers, rundir.staged_marker, rundir.staging_progress])
    p.files.write_file(rundir.spec, run.spec_yaml)
    if run.data_json:
        write_staging_plan(p, run, pt.ctx)
    p.files.write_file(rundir.script, pt.script)


def _refused(p: Parts, s: LoopState, runs: Sequence[Run], exc: SlurmError) -> bool:
    """sbatch refused the array: each point as a single run's refusal is taken (submit.py)."""
    now = p.clock()
    decided = []
    for run in p.store.runs_by_ids([r.id for r in runs if r.id is not None]):
        assert run.id is not None
        refusals = s.limit_refusals.get(run.id, 0) + 1
        outcome = lifecycle.sbatch_failed(run, exc, now, refusals=refusals, staging_job=None)
        if outcome is None:
            # Slurm did not answer; the array may be in: the points stay SUBMITTING and are
            # settled by token once Slurm answers again.
            raise exc
        if outcome.retry_in_s is not None:
            s.limit_refusals[run.id] = refusals
        decided.append((run, outcome))
    record_many(p, s, decided)
    return all(outcome.retry_in_s is None for _, outcome in decided)
