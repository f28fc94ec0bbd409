"""Releasing queued runs into Slurm: gather the policy's inputs (the queue, the lab's active jobs,
the quotas, fair-share usage), ask the pure policy for a plan, submit what it releases."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from datetime import datetime
from typing import Any

from hpcops import policy
from hpcops.engine.arrays import submit_points
from hpcops.engine.follow import dbd_answered
from hpcops.engine.state import LoopState, Parts
from hpcops.engine.submit import submit_runs
from hpcops.states import RunState
from hpcops.store import Run

_REPLAN_S = 30.0
_UNLIMITED = 10**12


def release(p: Parts, s: LoopState) -> None:
    now = p.clock()
    if not (s.dirty or now - s.planned_at > _REPLAN_S or now >= s.retry_due_at):
        return
    decision = plan(p, s)
    submitted = False
    # A retry's back-off ends then (plan): plan again at that moment, not every tick.
    s.retry_due_at = s.backoff_due_at
    ready: list[Run] = []
    for run in p.store.runs_by_ids(decision.release):
        retry_at = s.retry_after.get(run.id or 0, 0.0)
        if run.state != RunState.QUEUED:
            continue
        if retry_at > now:
            # Waiting out a Slurm limit's back-off: plan again when it is over, not every tick
            # (an idle daemon with 10,000 queued runs must stay idle).
            s.retry_due_at = min(s.retry_due_at, retry_at)
            continue
        if p.tracker is not None and not p.tracker.may_release(run, now):
            s.dirty = True  # its MLflow record is being made: look again next tick
            continue
        ready.append(run)
    limits = quotas(p)
    # The tracking thread's records wait while the jobs go in (Tracker.releasing).
    with p.tracker.releasing() if p.tracker is not None and ready else nullcontext():
        for batch in submit_steps(release_batches(ready)):
            submitted = True
            if goes_in_an_array(batch[0]):
                go_on = submit_points(p, s, batch, limits)
            else:
                go_on = submit_runs(p, s, batch)
            if not go_on:
                break
    # What was just released changes what the queue waits for: plan again next tick.
    s.dirty = s.dirty or submitted


def release_batches(runs: Sequence[Run]) -> list[list[Run]]:
    """The released runs as sbatch calls, in release order: a single run alone, a sweep's
    points together where its first point stands (one array for them; arrays.py splits it
    further where headers differ or MaxArraySize requires). A point's next attempt (a retry) is
    a plain single job: only a point's first attempt goes in an array."""
    batches: list[list[Run]] = []
    by_sweep: dict[int, list[Run]] = {}
    for run in runs:
        sweep_id = run.sweep_id
        if sweep_id is None or not goes_in_an_array(run):
            batches.append([run])
        elif sweep_id in by_sweep:
            by_sweep[sweep_id].append(run)
        else:
            by_sweep[sweep_id] = [run]
            batches.append(by_sweep[sweep_id])
    return batches


def submit_steps(batches: Sequence[list[Run]]) -> list[list[Run]]:
    """release_batches' single runs that follow one another as one step (one claim, sbatch
    calls side by side, one record: submit.py), a sweep's points as they were."""
    steps: list[list[Run]] = []
    for batch in batches:
        single = not goes_in_an_array(batch[0])
        if single and steps and not goes_in_an_array(steps[-1][0]):
            steps[-1].extend(batch)
        else:
            steps.append(list(batch))
    return steps


def goes_in_an_array(run: Run) -> bool:
    """A point of a sweep on its first attempt; its next attempts are plain single jobs."""
    return run.sweep_id is not None and run.attempts_ended == 0


def plan(p: Parts, s: LoopState) -> policy.Decision:
    """The release plan for the queue as it is now (pure policy over fresh inputs). A run
    waiting out its retry back-off is no candidate yet (it would hold a place in the plan for
    nothing); `s.backoff_due_at` says when the first of them may go."""
    generation = s.generation
    now = p.clock()
    candidates: list[policy.Candidate] = []
    s.backoff_due_at = float("inf")
    for row in p.store.queued_summaries():
        run_id, owner, priority, queued_at, cpus, gpus, partition, sweep_id, not_before = row
        if not_before is not None and not_before > now:
            s.backoff_due_at = min(s.backoff_due_at, not_before)
            continue
        candidates.append(
            policy.Candidate(
                run_id=run_id,
                owner=owner,
                priority=priority,
                queued_at=queued_at,
                cpus=cpus,
                gpus=gpus,
                partition=partition,
                group=sweep_id,
            )
        )
    sweeps = p.store.sweeps_by_ids(c.group for c in candidates if c.group is not None)
    decision = policy.plan_release(
        candidates,
        active_jobs(p, s),
        quotas(p),
        s.usage,
        max_active=p.config.max_active,
        pending_window=p.config.pending_window,
        # A sweep's max_parallel: at most that many of its points in Slurm at once.
        group_limits={i: w.max_parallel for i, w in sweeps.items() if w.max_parallel is not None},
    )
    s.last_decision, s.planned_at = decision, p.clock()
    # A change made by the API while this plan read the store stays pending.
    s.dirty = s.generation != generation
    return decision


def active_jobs(p: Parts, s: LoopState) -> list[policy.Active]:
    """The lab's jobs in Slurm: hpcops' own runs, and from the last poll those submitted by
    hand under the lab's account (they count against the quotas too)."""
    ours = p.store.in_slurm()
    active = [
        policy.Active(
            owner=r.owner,
            cpus=r.cpus,
            gpus=r.gpus,
            partition=r.partition,
            pending=r.state != RunState.RUNNING,
            group=r.sweep_id,
        )
        for r in ours
    ]
    our_jobs = {r.slurm_job_id for r in ours if r.slurm_job_id}
    our_tokens = {r.token for r in ours if r.token}
    for entry in s.last_queue:
        if entry.job_id in our_jobs or (entry.token and entry.token in our_tokens):
            continue
        if entry.token and entry.user == p.slurm_user:
            continue  # a job of ours that has just ended and left the database's view
        if entry.state.is_terminal:
            continue
        active.append(
            policy.Active(
                owner=entry.user,
                cpus=entry.cpus,
                gpus=entry.gpus,
                partition=entry.partition or None,
                pending=entry.state == RunState.PENDING,
                by_hand=True,
            )
        )
    return active


def quotas(p: Parts) -> policy.Quotas:
    """The config's quotas with the leads' run-time overrides on top."""
    q = p.config.quotas

    def limits(cfg: Any) -> dict[str, int | None]:
        return {"jobs": cfg.jobs, "cpus": cfg.cpus, "gpus": cfg.gpus}

    scopes: dict[str, dict[str, int | None]] = {
        "lab": limits(q.lab),
        "per_user": limits(q.per_user),
        **{f"user:{name}": limits(v) for name, v in q.users.items()},
        **{f"partition:{name}": limits(v) for name, v in q.partitions.items()},
    }
    for override in p.store.quota_overrides():
        scopes.setdefault(override.scope, {"jobs": None, "cpus": None, "gpus": None})
        value = override.value
        if value is None and override.scope.startswith("user:"):
            # For one user, None would mean "use per_user"; a lead who said "unlimited"
            # means no limit.
            value = _UNLIMITED
        scopes[override.scope][override.resource] = value

    def build(scope: str) -> policy.Limits:
        return policy.Limits(**scopes.get(scope, {}))

    return policy.Quotas(
        lab=build("lab"),
        per_user=build("per_user"),
        users={k.split(":", 1)[1]: build(k) for k in scopes if k.startswith("user:")},
        partitions={k.split(":", 1)[1]: build(k) for k in scopes if k.startswith("partition:")},
    )


def refresh_usage(p: Parts, s: LoopState) -> None:
    """Fair share: each member's GPU- and CPU-hours over the window, from Slurm's accounting
    (sacct asks slurmdbd, not slurmctld). hpcops runs count for their owner, jobs submitted
    by hand for their Slurm user."""
    fair = p.config.fair_share
    now = p.clock()
    if s.usage_at is not None and now - s.usage_at < fair.refresh_s:
        return
    since = datetime.fromtimestamp(now - fair.window_days * 86400)
    records = p.slurm.usage(since)
    dbd_answered(s)
    owners = p.store.owners_by_job([r.job_id for r in records])
    usage: dict[str, float] = {}
    for r in records:
        owner = owners.get(r.job_id, r.user)
        hours = r.elapsed_s / 3600
        usage[owner] = usage.get(owner, 0.0) + hours * (
            r.gpus * fair.gpu_hour_weight + r.cpus * fair.cpu_hour_weight
        )
    if usage != s.usage:
        s.dirty = True
    s.usage, s.usage_at = usage, now
