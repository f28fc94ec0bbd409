"""Submitting single runs: render each script, claim the runs as SUBMITTING with a fresh token
each, write their run directories, sbatch them (each after its staging job, when it stages data),
and sort Slurm's answers.

Submission is idempotent (docs/design.md, decision 3): the claims are committed before any sbatch,
and each token rides in its job's --comment, so a crash at any point is settled by token
(follow.py). For a release step of many runs (submit_runs) the claims are one transaction per
chunk of runs, the sbatch calls run a few at a time while the next chunk is prepared, and each
chunk's job ids are one transaction: the fault point before_sbatch stands before the step's
first sbatch, after_sbatch after a chunk's last (and before its job ids are recorded).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hpcops import lifecycle
from hpcops.engine.intake import check_cluster_limits, job_context
from hpcops.engine.pipeline_env import job_env
from hpcops.engine.record import record, record_many
from hpcops.engine.state import LoopState, Parts
from hpcops.errors import InvalidInput, SlurmError, SlurmRejected
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
from hpcops.slurm.backend import SlurmLimited
from hpcops.spec import Spec, parse_mem_mb, parse_slurm_time, parse_spec
from hpcops.states import RunState
from hpcops.store import Run, RunUpdate

if TYPE_CHECKING:
    from hpcops.tracking.worker import JobTracking

log = logging.getLogger(__name__)


_NOT_TRIED = "not submitted this tick: Slurm refused or did not answer a run before it"


@dataclass(frozen=True)
class _Ready:
    """A run rendered for its claim: its spec, fresh token, job context and script."""

    run: Run
    spec: Spec
    token: str
    ctx: JobContext
    script: str
    tracking: JobTracking | None


@dataclass(frozen=True)
class _Sent:
    """What one run's sbatch came to. Neither a job nor an error: it was not tried (a limit or
    an outage stopped the release step first)."""

    run: Run  # as claimed
    job_id: str | None = None
    staging_job: str | None = None
    error: Exception | None = None


# Runs claimed per transaction in a release step. While one chunk's sbatch calls run on the
# pool, the next chunk is rendered, claimed and written: rendering (a relay store is an MLflow
# file store, ~19 ms a run) then overlaps Slurm's answers instead of preceding all of them
# (issue 16: 200 runs spent 3.45 s rendering, then 1.93 s in sbatch).
CLAIM_CHUNK = 32


def submit_runs(p: Parts, s: LoopState, runs: Sequence[Run]) -> bool:
    """Submit single runs (one release step's, in release order); False when releasing should
    stop for this tick.

    The runs go in chunks of CLAIM_CHUNK. Each chunk's runs are rendered, then ALL claimed
    (SUBMITTING, each with its own token) in one transaction before any of their sbatch calls
    starts: the crash-safety invariant (module docstring) holds for every run, at the cost of
    one commit per chunk instead of one per run. The sbatch calls run `slurm.sbatch_workers`
    at a time (slurmctld answers several at once; one after another, 200 runs cost 200 round
    trips) while the next chunk is prepared, and each chunk's job ids are recorded in one
    transaction. The step's first sbatch goes alone: a full limit or an unreachable slurmctld
    then costs one call, not a pool's worth; the runs of its chunk not tried go back to the
    queue, and the later chunks are never claimed.
    """
    started = time.monotonic()
    stop = threading.Event()
    timing = {"prepare": 0.0, "sbatch_wait": 0.0, "record": 0.0}
    go_on, failure, n_claimed = True, None, 0
    in_flight: list[tuple[list[tuple[Run, _Ready]], list[Future[_Sent]]]] = []
    workers = max(1, p.config.slurm.sbatch_workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="sbatch") as pool:
        for at in range(0, len(runs), CLAIM_CHUNK):
            if stop.is_set() or not go_on:
                break  # the later runs were never claimed: still QUEUED, as they were
            prepared_at = time.monotonic()
            claimed = _prepare_chunk(p, s, runs[at : at + CLAIM_CHUNK])
            timing["prepare"] += time.monotonic() - prepared_at
            if not claimed:
                continue
            futures: list[Future[_Sent]] = []
            if n_claimed == 0:
                fault_point(p, "before_sbatch")
                first: Future[_Sent] = Future()
                first.set_result(_sbatch(p, s, *claimed[0], stop))
                futures.append(first)
                claimed_rest = claimed[1:]
            else:
                claimed_rest = claimed
            n_claimed += len(claimed)
            futures += [pool.submit(_sbatch, p, s, run, r, stop) for run, r in claimed_rest]
            if in_flight:
                go_on, failure = _finish_chunk(p, s, in_flight.pop(), timing, go_on, failure)
            in_flight.append((claimed, futures))
        while in_flight:
            go_on, failure = _finish_chunk(p, s, in_flight.pop(), timing, go_on, failure)
    if n_claimed > 1:
        # Where a release step's time goes: the daemon's own share against Slurm's.
        log.info(
            "released %d runs in %.2f s: render+claim+write %.2f s, waiting for sbatch "
            "%.2f s, record %.2f s",
            n_claimed,
            time.monotonic() - started,
            timing["prepare"],
            timing["sbatch_wait"],
            timing["record"],
        )
    if failure is not None:
        raise failure
    return go_on


def _prepare_chunk(p: Parts, s: LoopState, runs: Sequence[Run]) -> list[tuple[Run, _Ready]]:
    """Render, claim (one transaction) and write the run directories of one chunk."""
    ready = [r for r in (_render(p, s, run) for run in runs) if r is not None]
    claimed = _claim(p, s, ready)
    for run, r in claimed:
        _write_run_dir(p, run, r)
    return claimed


def _finish_chunk(
    p: Parts,
    s: LoopState,
    chunk: tuple[list[tuple[Run, _Ready]], list[Future[_Sent]]],
    timing: dict[str, float],
    go_on: bool,
    failure: BaseException | None,
) -> tuple[bool, BaseException | None]:
    """Wait for one chunk's sbatch calls and record them. A failure that leaves a run
    SUBMITTING is kept, not raised, until every chunk in flight is recorded."""
    _, futures = chunk
    waited_at = time.monotonic()
    sent = [f.result() for f in futures]
    timing["sbatch_wait"] += time.monotonic() - waited_at
    if any(x.job_id is not None for x in sent):
        fault_point(p, "after_sbatch")
    recorded_at = time.monotonic()
    try:
        go_on = _record_sent(p, s, sent) and go_on
    except Exception as exc:
        failure = failure or exc
    finally:
        timing["record"] += time.monotonic() - recorded_at
    return go_on, failure


def _render(p: Parts, s: LoopState, run: Run) -> _Ready | None:
    """The run's script, rendered before the claim: a template that broke since the run was
    queued fails the run here rather than leaving it SUBMITTING."""
    assert run.id is not None
    source = f"run {run.id}"
    token = secrets.token_hex(8)
    tracking = job_tracking(p, run)
    mlflow_env = tracking.env if tracking is not None else ()
    try:
        spec = parse_spec(run.spec_yaml, source)
        check_cluster_limits(p, s, spec, source)
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
        return None
    return _Ready(run, spec, token, ctx, script, tracking)


def _claim(p: Parts, s: LoopState, ready: Sequence[_Ready]) -> list[tuple[Run, _Ready]]:
    """Claim every rendered run in ONE transaction; the claimed runs with their renderings,
    less those cancelled or changed by a user since they were read."""
    if not ready:
        return []
    now = p.clock()
    changes: list[tuple[int, str, RunUpdate]] = []
    for r in ready:
        run = r.run
        assert run.id is not None
        fields = RunUpdate(
            # Not the token itself in the note: it is live until the job is known, and history
            # is for everyone.
            token=r.token,
            attempt=run.attempt + 1,
            claimed_at=now,
            # Set with the claim, in one transaction: the directory exists only for released
            # runs.
            run_dir=str(run_dir_path(p.placement.run_root, run.id)),
        )
        if r.tracking is not None:
            # Where the job logs its MLflow data (a relay store), committed with the claim.
            fields.update(r.tracking.fields)  # type: ignore[typeddict-item]  # TrackingFields
        # The claim counter; a retried run's attempt number too (its ended attempts + 1).
        note = (
            f"attempt {attempt_number(run)}, claim {run.attempt + 1}"
            if run.attempts_ended
            else f"attempt {run.attempt + 1}"
        )
        changes.append((run.id, note, fields))
    changed = {
        c.id: c
        for c in p.store.transition_many(
            changes, RunState.SUBMITTING, actor=DAEMON, expect=(RunState.QUEUED,)
        )
    }
    claimed: list[tuple[Run, _Ready]] = []
    for r in ready:
        now_claimed = changed.get(r.run.id)
        if now_claimed is None:
            continue  # cancelled or changed by a user since it was read
        if now_claimed.cancel_requested_by:
            outcome = lifecycle.cancel_unsubmitted(now_claimed, "before sbatch", p.clock())
            record(p, s, now_claimed, outcome)
            continue
        claimed.append((now_claimed, r))
    return claimed


def _write_run_dir(p: Parts, run: Run, r: _Ready) -> None:
    # A TransportError here leaves the runs SUBMITTING with no job: the check by token queues
    # them again after submit_grace_s.
    rundir = RunDir(Path(run.run_dir))
    p.files.make_dir(rundir.path)
    p.files.remove_files([*rundir.markers, rundir.staged_marker, rundir.staging_progress])
    p.files.write_file(rundir.spec, run.spec_yaml)
    if run.data_json:
        write_staging_plan(p, run, r.ctx)
    p.files.write_file(rundir.script, r.script)


def _sbatch(p: Parts, s: LoopState, run: Run, r: _Ready, stop: threading.Event) -> _Sent:
    """One run's sbatch (after its staging job's, when it stages data), unless the release step
    was stopped: a full limit or an unreachable Slurm (another try would cost an RPC for the
    same answer), or a failure of this daemon's own."""
    if stop.is_set():
        return _Sent(run)
    rundir = RunDir(Path(run.run_dir))
    ctx, staging_job = r.ctx, None
    try:
        if ctx.staging is not None and not ctx.staging.inline:
            # A staging job of its own first; the run's job then waits for it (afterok). A crash
            # between the two leaves a staging job whose token ends in ":stage": the check by
            # token never takes it for the run's job, so the run is submitted again after
            # submit_grace_s, and the stray stager only warms the cache.
            staging_job = _submit_staging_job(p, r.spec, ctx)
            fault_point(p, "after_staging_sbatch")
            ctx = dataclasses.replace(ctx, after=staging_job)
            p.files.write_file(rundir.script, render_script(r.spec, ctx, p.config.template_dirs))
        job_id = p.slurm.submit(PurePosixPath(rundir.script))
        s.ctld_answered = True
        return _Sent(run, job_id=job_id, staging_job=staging_job)
    except Exception as exc:
        if not isinstance(exc, SlurmRejected) or isinstance(exc, SlurmLimited):
            stop.set()
        return _Sent(run, staging_job=staging_job, error=exc)
    except BaseException:
        stop.set()  # the daemon is dying here: no other sbatch starts
        raise


def _record_sent(p: Parts, s: LoopState, sent: Sequence[_Sent]) -> bool:
    """Record what the step's sbatch calls came to: the job ids in one transaction, each
    refusal as a lone run's always was, the runs not tried back to the queue. Raises the first
    failure that leaves a run SUBMITTING (Slurm did not answer; a file could not be written)
    once the rest is recorded; False when a full limit stops releasing for this tick."""
    now = p.clock()
    record_many(
        p,
        s,
        [
            (x.run, lifecycle.submitted(x.job_id, x.staging_job, now))
            for x in sent
            if x.job_id is not None
        ],
    )
    others = [x for x in sent if x.job_id is None]
    fresh = {r.id: r for r in p.store.runs_by_ids([x.run.id or 0 for x in others])}
    go_on, raised = True, None
    untried: list[tuple[int, str, RunUpdate]] = []
    for x in others:
        run_id = x.run.id or 0
        now_run = fresh.get(run_id, x.run)  # as it is now: a cancel may have come meanwhile
        if x.error is None:
            if now_run.cancel_requested_by:
                record(p, s, x.run, lifecycle.cancel_unsubmitted(now_run, "before sbatch", now))
            else:
                # Its sbatch never started: back in the queue as it was (its claim not counted).
                back = RunUpdate(token=None, attempt=x.run.attempt - 1)
                untried.append((run_id, _NOT_TRIED, back))
            continue
        if not isinstance(x.error, SlurmError):
            raised = raised or x.error
            continue
        refusals = s.limit_refusals.get(run_id, 0) + 1
        outcome = lifecycle.sbatch_failed(
            now_run, x.error, now, refusals=refusals, staging_job=x.staging_job
        )
        if outcome is None:
            # Slurm did not answer; the request may have reached slurmctld: the run stays
            # SUBMITTING and is settled by token once Slurm answers again.
            raised = raised or x.error
            continue
        if outcome.retry_in_s is not None:
            s.limit_refusals[run_id] = refusals
            # A full limit: the others may still go, but not this tick (each try costs an RPC).
            go_on = False
        record(p, s, x.run, outcome)
    if untried:
        p.store.transition_many(
            untried, RunState.QUEUED, actor=DAEMON, expect=(RunState.SUBMITTING,)
        )
        s.changed()
    if raised is not None:
        raise raised
    return go_on


def write_staging_plan(p: Parts, run: Run, ctx: JobContext) -> None:
    """The plan the job's stager follows: each version, and where the job will read it."""
    assert run.data_json is not None and ctx.staging is not None
    targets = []
    for item in json.loads(run.data_json):
        item["dest"] = data_view(ctx, item["dest"])
        targets.append(item)
    plan = {
        "cache": str(p.data_cache.root),
        "mirror": str(p.code_mirror.shared),  # the stager reads it on a compute node
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
