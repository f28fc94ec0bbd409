"""Requests from lab members that change or explain one run: cancel, priority, top, hold,
release a hold, retry, rerun, and why a run is where it is."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from hpcops.access import Caller
from hpcops.code.mirror import Shipment
from hpcops.engine.intake import build_sweep, check_spec, new_run, pin
from hpcops.engine.state import LoopState, Parts
from hpcops.errors import InvalidInput
from hpcops.lifecycle import Outcome
from hpcops.retries import attempt_end, attempt_number, next_attempt_fields
from hpcops.rundir import RunDir
from hpcops.spec import Spec, parse_spec
from hpcops.states import IN_SLURM_STATES, WAITING_STATES, RunState, why_not_retryable
from hpcops.store import Run, Sweep

# A run with a Slurm job: cancelled, not held.
_HAS_JOB = (RunState.STAGING, RunState.PENDING, RunState.RUNNING)


def cancel(p: Parts, s: LoopState, run_id: int, caller: Caller) -> tuple[Run, str]:
    # Read again if the run moves between the read and the change: a job that ends as the cancel
    # lands may queue the run's next attempt (retries), which must be cancelled at once as a
    # queued run, not marked for a claim the retry's back-off may put off for a day.
    for _ in range(3):
        run = p.store.get(run_id)
        state = RunState(run.state)
        if state.is_terminal:
            return run, f"run {run_id} already ended ({state})"
        if state in WAITING_STATES:
            done = p.store.transition(
                run_id,
                RunState.CANCELLED,
                actor=caller.name,
                note="cancelled before release",
                expect=tuple(WAITING_STATES),
                ended_at=p.clock(),
                cancel_requested_by=caller.name,
            )
            if done is not None:
                s.changed()
                return done, f"run {run_id} cancelled"
            continue  # claimed meanwhile: SUBMITTING now
        updated = p.store.transition(
            run_id,
            None,
            actor=caller.name,
            note="cancel requested",
            expect=tuple(IN_SLURM_STATES),
            cancel_requested_by=caller.name,
        )
        if updated is not None:
            s.changed()
            return updated, (
                f"run {run_id}: cancel sent to Slurm job {run.slurm_job_id or '(pending)'}"
            )
    raise InvalidInput(f"run {run_id} keeps changing; see `hpcops show {run_id}` and try again")


def set_priority(
    p: Parts, s: LoopState, run_id: int, priority: int, caller: Caller, note: str = ""
) -> Run:
    run = p.store.get(run_id)
    updated = p.store.transition(
        run_id,
        None,
        actor=caller.name,
        note=note or f"priority {run.priority} -> {priority}",
        priority=priority,
    )
    assert updated is not None
    s.changed()
    return updated


def top(p: Parts, s: LoopState, run_id: int, caller: Caller) -> Run:
    """The run goes next: above every queued run's priority."""
    run = p.store.get(run_id)
    highest = p.store.max_queued_priority()
    # Strictly above every queued run (a tie would leave fair share to decide), capped at
    # the top of the allowed range.
    priority = min(1000, max(run.priority, (highest if highest is not None else 0) + 1))
    note = f"moved to the top by {caller.name}: priority {run.priority} -> {priority}"
    return set_priority(p, s, run_id, priority, caller, note)


def hold(p: Parts, s: LoopState, run_id: int, caller: Caller) -> Run:
    run = p.store.get(run_id)
    if run.state == RunState.HELD:
        return run
    if run.state != RunState.QUEUED:
        raise InvalidInput(
            f"run {run_id} is {run.state}: only a run still in hpcops' queue can be held"
            + ("; cancel it instead" if run.state in _HAS_JOB else "")
        )
    updated = p.store.transition(
        run_id,
        RunState.HELD,
        actor=caller.name,
        expect=(RunState.QUEUED,),
        note=f"held by {caller.name}",
        held_by=caller.name,
    )
    if updated is None:
        raise InvalidInput(f"run {run_id} left the queue meanwhile; see `hpcops show {run_id}`")
    s.changed()
    return updated


def release_hold(p: Parts, s: LoopState, run_id: int, caller: Caller) -> Run:
    run = p.store.get(run_id)
    if run.state != RunState.HELD:
        raise InvalidInput(f"run {run_id} is {run.state}, not HELD")
    updated = p.store.transition(
        run_id,
        RunState.QUEUED,
        actor=caller.name,
        expect=(RunState.HELD,),
        note=f"released by {caller.name}",
        held_by=None,
    )
    assert updated is not None
    s.changed()
    return updated


def retry(p: Parts, s: LoopState, run_id: int, caller: Caller) -> Run:
    """An ended run's next attempt, queued by hand: the same run (its MLflow record reopened),
    the same run directory and checkpoint directory, a new Slurm job. Any ended run but a
    completed one (that is rerun: a new run). It is one attempt more whatever the spec's
    retry.max_attempts, and it queues as a new attempt does (retry.keep_place); the API checks
    who may ask."""
    run = p.store.get(run_id)
    state = RunState(run.state)
    refused = why_not_retryable(run_id, state)
    if refused is not None:
        raise InvalidInput(refused)
    if run.run_dir:
        # The ended attempt's markers must never speak for the next one.
        p.files.remove_files(RunDir(Path(run.run_dir)).markers)
    number = attempt_number(run)
    note = f"retried by {caller.name}: attempt {number} queued"
    # A run that ended before attempts were recorded has its job but no row for it: recorded
    # now, in this transaction, as an automatic retry would, or clearing slurm_job_id below would
    # drop the job from `show`, fair share (owners_by_job) and MLflow.
    unrecorded = run.slurm_job_id is not None and run.attempts_ended == 0
    updated = p.store.transition(
        run_id,
        RunState.QUEUED,
        actor=caller.name,
        expect=(state,),
        note=note,
        ended=attempt_end(run, Outcome(state)) if unrecorded else None,
        **next_attempt_fields(p.clock(), keep_place=p.config.retry.keep_place),
        reason=note,
        retry_not_before=None,
        cancel_requested_by=None,
        held_by=None,
    )
    if updated is None:
        raise InvalidInput(f"run {run_id} changed meanwhile; see `hpcops show {run_id}`")
    s.changed()
    if p.tracker is not None:
        p.tracker.wake.set()  # reopen its record now, so release need not wait
    return updated


# --- rerun (hpcops/tracking) ---------------------------------------------------------------


def rerun(
    p: Parts,
    s: LoopState,
    source: int | str,
    overrides: dict[str, str],
    caller: Caller,
    check: Callable[[Spec], None] | None = None,
) -> Run:
    """Queue a run again from its record: an hpcops run id, or an MLflow run id (this
    daemon's, or any run on the tracking server that hpcops recorded). Same spec, same code
    commit, same params unless `overrides` change them; the two records are linked."""

    from hpcops.tracking.records import MLFLOW_RUN_ID_RE
    from hpcops.tracking.rerun import apply_overrides

    original: Run | None = None
    if isinstance(source, int):
        original = p.store.get(source)
    elif MLFLOW_RUN_ID_RE.fullmatch(source):
        original = p.store.find_by_mlflow_run(source)
    else:
        raise InvalidInput(
            f"{source!r} is neither an hpcops run id (a number) nor an MLflow run id "
            "(32 hex digits)"
        )
    tags: dict[str, str] = {}
    if original is not None:
        spec_yaml, mlflow_id = original.spec_yaml, original.mlflow_run_id
    else:
        assert isinstance(source, str)
        if p.tracker is None:
            raise InvalidInput("tracking is off (tracking.enabled: false): no MLflow records")
        spec_yaml, tags = p.tracker.recorded_spec(source)
        mlflow_id = source
    label = f"rerun of {source}"
    spec = parse_spec(json.dumps(apply_overrides(spec_yaml, overrides)), label)
    # The same code: the recorded spec names the full commit, and a dirty original's
    # snapshot is checked out again from the mirror; the data, read at that commit, is the
    # same version.
    if original is not None:
        shipment = Shipment(checkout=original.code_checkout, dirty=original.code_dirty)
    else:
        dirty = tags.get("hpcops.git.dirty") == "true"
        shipment = Shipment(checkout=tags.get("hpcops.git.snapshot"), dirty=dirty)
    spec, fields = pin(p, spec, shipment, label, caller)
    check_spec(p, s, spec, label)
    if check is not None:
        check(spec)  # the caller's own limits (a member's priority range), before queueing
    run = new_run(p, spec, caller, **fields)
    run.rerun_of_mlflow = mlflow_id
    run.rerun_of_run = original.id if original is not None else None
    if original is not None and original.sweep_id is not None:
        # A point again: a new run of the same point of the same sweep (its MLflow record
        # nests under the sweep's parent; the sweep counts the point by its latest run).
        run.name, run.sweep_id, run.sweep_index = (
            original.name,
            original.sweep_id,
            original.sweep_index,
        )
    [added] = p.store.add_runs([run], actor=caller.name)
    s.changed()
    if p.tracker is not None:
        p.tracker.wake.set()
    return added


def rerun_sweep(p: Parts, s: LoopState, sweep_id: int, caller: Caller) -> tuple[Sweep, list[Run]]:
    """A sweep queued again for `caller`: its stored spec (code commit, data versions, a random
    search's seed), so the same points; the new sweep names the one it reruns."""
    original = p.store.get_sweep(sweep_id)
    label = f"rerun of sweep s{sweep_id}"
    spec = parse_spec(original.spec_yaml, label)
    earlier = p.store.sweep_runs(sweep_id)
    shipment = None
    if earlier and earlier[0].code_checkout is not None:
        # A dirty original's snapshot is checked out again from the mirror, as for a run.
        shipment = Shipment(checkout=earlier[0].code_checkout, dirty=earlier[0].code_dirty)
    spec, fields = pin(p, spec, shipment, label, caller)
    sweep, runs = build_sweep(p, s, spec, fields, label, caller)
    sweep.rerun_of_sweep = sweep_id
    added = p.store.add_sweep(sweep, runs, actor=caller.name, reason=label)
    s.changed()
    if p.tracker is not None:
        p.tracker.wake.set()
    return added


def why(p: Parts, s: LoopState, run: Run) -> str:
    """One line: why the run is where it is."""
    state = RunState(run.state)
    if state is RunState.QUEUED:
        if run.gated:
            return f"waits for the steps before {run.pipeline_step} in pipeline p{run.pipeline_id}"
        if run.retry_not_before is not None and run.retry_not_before > p.clock():
            return f"{run.reason or 'its next attempt waits'} (retry.backoff_s)"
        decision = s.last_decision
        if decision is None or run.id is None:
            return "just queued; the daemon is planning its release"
        retry_at = s.retry_after.get(run.id, 0.0)
        if retry_at > p.clock():
            return (
                f"{run.reason or 'Slurm refused it for a limit'}; trying again in "
                f"{retry_at - p.clock():.0f} s"
            )
        if run.id in decision.release:
            return "being released into Slurm now"
        if run.id not in decision.waiting:
            return "just queued; the daemon is planning its release"
        return decision.waiting[run.id]
    if state is RunState.HELD:
        return f"held by {'lead ' if run.held_by != run.owner else ''}{run.held_by}"
    if state is RunState.SUBMITTING:
        return "being submitted to Slurm"
    if state is RunState.STAGING:
        return (
            f"staging its data (Slurm job {run.staging_job_id}); its job "
            f"{run.slurm_job_id} starts when that succeeds"
        )
    if state is RunState.PENDING:
        return f"Slurm: {run.reason or 'pending'}"
    if state is RunState.RUNNING:
        return "running"
    return f"ended {state}" + (f": {run.reason}" if run.reason else "")
