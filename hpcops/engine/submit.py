"""Submitting one run: render its script, claim it as SUBMITTING with a fresh token, write its
run directory, sbatch (after its staging job, when it stages data), and sort Slurm's answer.

Submission is idempotent (DESIGN.md, decision 3): the claim is committed before sbatch, and the
token rides in the job's --comment, so a crash at any point is settled by token (follow.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hpcops import lifecycle
from hpcops.engine.intake import check_cluster_limits, job_context
from hpcops.engine.pipeline_env import job_env
from hpcops.engine.record import record
from hpcops.engine.state import LoopState, Parts
from hpcops.errors import InvalidInput, SlurmError
from hpcops.jobcontext import run_dir_path
from hpcops.lifecycle import DAEMON
from hpcops.render import (
    STAGING_SCRIPT,
    JobContext,
    StagingJob,
    data_view,
    render_script,
    render_staging_script,
)
from hpcops.retries import attempt_number
from hpcops.rundir import RunDir
from hpcops.spec import Spec, parse_mem_mb, parse_slurm_time, parse_spec
from hpcops.states import RunState
from hpcops.store import Run

if TYPE_CHECKING:
    from hpcops.tracking.worker import JobTracking

log = logging.getLogger(__name__)


def submit_run(p: Parts, s: LoopState, run: Run) -> bool:
    """Submit one run; False when releasing should stop for this tick."""
    assert run.id is not None
    source = f"run {run.id}"
    token = secrets.token_hex(8)
    tracking = job_tracking(p, run)
    mlflow_env = tracking.env if tracking is not None else ()
    try:
        spec = parse_spec(run.spec_yaml, source)
        check_cluster_limits(p, s, spec, source)
        # Rendered before the claim: a template that broke since the run was queued fails the
        # run here rather than leaving it SUBMITTING.
        ctx = job_context(
            p,
            spec,
            run.id,
            token,
            mlflow_env,
            checkout=run.code_checkout,
            attempt=attempt_number(run),
            pipeline_env=job_env(run),
        )
        script = render_script(spec, ctx, p.config.template_dirs)
    except InvalidInput as exc:
        # The cluster or the lab's templates changed since the run was queued.
        record(p, s, run, lifecycle.unsubmittable(str(exc), p.clock()))
        return True
    claimed = p.store.transition(
        run.id,
        RunState.SUBMITTING,
        actor=DAEMON,
        expect=(RunState.QUEUED,),
        # Not the token itself: it is live until the job is known, and history is for everyone.
        # The claim counter; a retried run's attempt number too (its ended attempts + 1).
        note=f"attempt {attempt_number(run)}, claim {run.attempt + 1}"
        if run.attempts_ended
        else f"attempt {run.attempt + 1}",
        token=token,
        attempt=run.attempt + 1,
        claimed_at=p.clock(),
        # Set with the claim, in one transaction: the directory exists only for released runs.
        run_dir=str(run_dir_path(p.placement.run_root, run.id)),
        # Where the job logs its MLflow data (a relay store), committed with the claim.
        **(tracking.fields if tracking is not None else {}),
    )
    if claimed is None:
        return True  # cancelled or changed by a user since it was read
    if claimed.cancel_requested_by:
        record(p, s, claimed, lifecycle.cancel_unsubmitted(claimed, "before sbatch", p.clock()))
        return True
    rundir = RunDir(Path(claimed.run_dir))
    # A TransportError here leaves the run SUBMITTING with no job: the check by token queues it
    # again after submit_grace_s.
    p.files.make_dir(rundir.path)
    p.files.remove_files([*rundir.markers, rundir.staged_marker, rundir.staging_progress])
    p.files.write_file(rundir.spec, claimed.spec_yaml)
    if claimed.data_json:
        write_staging_plan(p, claimed, ctx)
    p.files.write_file(rundir.script, script)
    fault_point(p, "before_sbatch")
    staging_job: str | None = None
    try:
        if ctx.staging is not None and not ctx.staging.inline:
            # A staging job of its own first; the run's job then waits for it (afterok). A crash
            # between the two leaves a staging job whose token ends in ":stage": the check by
            # token never takes it for the run's job, so the run is submitted again after
            # submit_grace_s, and the stray stager only warms the cache.
            staging_job = _submit_staging_job(p, spec, ctx)
            fault_point(p, "after_staging_sbatch")
            ctx = dataclasses.replace(ctx, after=staging_job)
            script = render_script(spec, ctx, p.config.template_dirs)
            p.files.write_file(rundir.script, script)
        job_id = p.slurm.submit(PurePosixPath(rundir.script))
        s.ctld_answered = True
    except SlurmError as exc:
        refusals = s.limit_refusals.get(run.id, 0) + 1
        outcome = lifecycle.sbatch_failed(
            p.store.get(run.id), exc, p.clock(), refusals=refusals, staging_job=staging_job
        )
        if outcome is None:
            # Slurm did not answer; the request may have reached slurmctld: the run stays
            # SUBMITTING and is settled by token once Slurm answers again.
            raise
        if outcome.retry_in_s is not None:
            s.limit_refusals[run.id] = refusals
        record(p, s, claimed, outcome)
        # A full limit: the others may still go, but not this tick (each try costs an RPC).
        return outcome.retry_in_s is None
    fault_point(p, "after_sbatch")
    record(p, s, claimed, lifecycle.submitted(job_id, staging_job, p.clock()))
    return True


def write_staging_plan(p: Parts, run: Run, ctx: JobContext) -> None:
    """The plan the job's stager follows: each version, and where the job will read it."""
    assert run.data_json is not None and ctx.staging is not None
    targets = []
    for item in json.loads(run.data_json):
        item["dest"] = data_view(ctx, item["dest"])
        targets.append(item)
    plan = {
        "cache": str(p.data_cache.root),
        "mirror": str(p.code_mirror.path),
        "progress": str(ctx.run_dir.staging_progress),
        "marker": str(ctx.run_dir.staged_marker),
        # The attempt's token: a stray stager of an earlier attempt (a crash between the two
        # sbatch calls) writes markers the daemon can tell from this attempt's.
        "token": ctx.token,
        "targets": targets,
    }
    p.files.write_file(PurePosixPath(ctx.staging.plan), json.dumps(plan, indent=1))


def _submit_staging_job(p: Parts, spec: Spec, ctx: JobContext) -> str:
    cfg = p.config.data.staging_job
    job = StagingJob(
        partition=cfg.partition,
        qos=cfg.qos,
        cpus=cfg.cpus,
        mem_mb=parse_mem_mb(cfg.mem),
        time_min=max(1, parse_slurm_time(cfg.time) // 60),
    )
    path = ctx.run_dir.path / STAGING_SCRIPT
    p.files.write_file(path, render_staging_script(spec, ctx, job))
    return p.slurm.submit(PurePosixPath(path))


def job_tracking(p: Parts, run: Run) -> JobTracking | None:
    """The MLflow environment for this submission. A relay store that cannot be made (say,
    scratch is full) must not stop the job: it runs untracked, and the record still gets
    hpcops' own part (creation, Slurm's accounting, the logs)."""
    if p.tracker is None:
        return None
    assert run.id is not None
    try:
        return p.tracker.job_tracking(run, run_dir_path(p.placement.run_root, run.id))
    except Exception:
        log.exception("run %s: no MLflow environment for its job; it runs untracked", run.id)
        return None


def fault_point(p: Parts, name: str) -> None:
    if p.fault == name:
        log.warning("fault point %s: killing the daemon with SIGKILL (HPCOPS_FAULT)", name)
        os.kill(os.getpid(), signal.SIGKILL)
