"""Pipelines: one row per pipeline, one per step; a spec step's runs are ordinary runs that name
their pipeline and step (Run.pipeline_id, Run.pipeline_step) and wait, `gated`, until the engine
opens their step.

A pipeline, its steps and every step's runs (a sweep step: its Sweep and points) are queued in
one transaction: all of them, or none. Opening a step, ending a doomed one, and replacing a
step's runs for a rerun are each one transaction too, so a daemon killed at any instant leaves
every step either waiting or released, never both (the engine's tick decides again from here).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Unpack

from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from hpcops.errors import NotFound, StoreError
from hpcops.states import RunState
from hpcops.store.models import (
    Event,
    Pipeline,
    PipelineStep,
    PipelineUpdate,
    Run,
    Sweep,
    apply_fields,
)
from hpcops.store.runs import RunTables, _change, check_initial, record_queued

# A step's runs, as queued: a run step's one run, or a sweep step's Sweep and its points' runs.
StepRuns = tuple[Sweep | None, Sequence[Run]]


class PipelineTables(RunTables):
    """The pipeline and step tables, and the transactions that move a step."""

    def add_pipeline(
        self,
        pipeline: Pipeline,
        steps: Sequence[PipelineStep],
        runs: dict[str, StepRuns],
        actor: str,
        reason: str = "submitted",
    ) -> tuple[Pipeline, list[Run]]:
        """The pipeline, its steps and each spec step's runs (`runs`, by step name), in one
        transaction. Every run is stored gated, naming its pipeline and step; a register step
        starts QUEUED. Returns the pipeline and every run queued."""
        for run in _every_run(runs):
            check_initial(run)
        with self._session() as session:
            every = store_pipeline(
                session, pipeline, steps, runs, actor, reason, now=time.time(), track=self.track
            )
        return pipeline, every

    def get_pipeline(self, pipeline_id: int) -> Pipeline:
        with self._session() as session:
            pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            raise NotFound(f"no pipeline p{pipeline_id}; `hpcops ls` lists the pipelines")
        return pipeline

    def list_pipelines(
        self, limit: int | None = None, newest_first: bool = False, open_only: bool = False
    ) -> list[Pipeline]:
        """The pipelines; `open_only`: those with a step that has not ended (the engine's)."""
        order = col(Pipeline.id).desc() if newest_first else col(Pipeline.id)
        query = select(Pipeline).order_by(order)
        if open_only:
            query = query.where(col(Pipeline.ended_at).is_(None))
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return list(session.exec(query).all())

    def pipeline_steps(self, pipeline_ids: Iterable[int]) -> dict[int, list[PipelineStep]]:
        """Each pipeline's steps, in its file's order."""
        ids = sorted(set(pipeline_ids))
        found: dict[int, list[PipelineStep]] = {i: [] for i in ids}
        if not ids:
            return found
        query = (
            select(PipelineStep)
            .where(col(PipelineStep.pipeline_id).in_(ids))
            .order_by(col(PipelineStep.pipeline_id), col(PipelineStep.position))
        )
        with self._session() as session:
            for step in session.exec(query).all():
                found[step.pipeline_id].append(step)
        return found

    def pipeline_runs(self, pipeline_id: int) -> list[Run]:
        """Every run of the pipeline's steps, reruns included, oldest first."""
        query = select(Run).where(Run.pipeline_id == pipeline_id).order_by(col(Run.id))
        with self._session() as session:
            return list(session.exec(query).all())

    def update_pipeline(self, pipeline_id: int, **fields: Unpack[PipelineUpdate]) -> Pipeline:
        with self._session() as session:
            pipeline = session.get(Pipeline, pipeline_id)
            if pipeline is None:
                raise NotFound(f"no pipeline p{pipeline_id}")
            apply_fields(pipeline, fields, PipelineUpdate, "pipelines")
            pipeline.updated_at = time.time()
            session.add(pipeline)
            return pipeline

    def open_step(
        self,
        step_id: int,
        inputs_json: str | None,
        actor: str,
        model_run_id: int | None = None,
    ) -> PipelineStep | None:
        """Let a step go, in one transaction: its runs lose their gate and get their inputs, a
        register step goes RUNNING (the tracker promotes). None if it was opened already (a
        tick repeated after a crash opens nothing twice)."""
        now = time.time()
        with self._session() as session:
            step = session.get(PipelineStep, step_id)
            if step is None:
                raise NotFound(f"no pipeline step {step_id}")
            if step.opened_at is not None:
                return None
            step.opened_at = now
            step.updated_at = now
            if step.kind == "register":
                step.state = RunState.RUNNING
                step.model_run_id = model_run_id
            session.add(step)
            for run in session.exec(_current_runs(step)).all():
                run.gated = False
                run.inputs_json = inputs_json
                run.updated_at = now
                session.add(run)
                assert run.id is not None
                session.add(
                    Event(
                        run_id=run.id,
                        at=now,
                        actor=actor,
                        from_state=run.state,
                        to_state=run.state,
                        reason="the steps it waits for completed",
                    )
                )
            return step

    def end_step(
        self,
        step_id: int,
        state: RunState,
        reason: str,
        actor: str,
        result_json: str | None = None,
    ) -> list[Run]:
        """End a step that has not started: its waiting runs (QUEUED or HELD) go to `state`
        (CANCELLED, when a step it waits for did not complete), a register step too. In one
        transaction; returns the runs changed. A register step's own end (the tracker's
        promotion) comes through here with COMPLETED or FAILED and its result."""
        now = time.time()
        changed: list[Run] = []
        with self._session() as session:
            step = session.get(PipelineStep, step_id)
            if step is None:
                raise NotFound(f"no pipeline step {step_id}")
            if step.kind == "register":
                if step.state is not None and step.state.is_terminal:
                    return []
                step.state, step.reason, step.ended_at = state, reason, now
                step.result_json = result_json
            step.updated_at = now
            session.add(step)
            for run in session.exec(_current_runs(step)).all():
                assert run.id is not None
                done = _change(
                    session,
                    run.id,
                    state,
                    actor,
                    reason,
                    (RunState.QUEUED, RunState.HELD),
                    {"reason": reason, "ended_at": now, "gated": False},
                    self.track,
                )
                if done is not None:
                    changed.append(done)
        return changed

    def restart_steps(
        self, pipeline_id: int, fresh: dict[str, StepRuns], actor: str, reason: str
    ) -> list[Run]:
        """A rerun of some of a pipeline's steps (`hpcops rerun p3.train --downstream`): each
        named step gets new runs (gated, waiting again), its gate closed, a register step
        QUEUED again, and the pipeline open again; in one transaction. Refused while one of
        those steps still has a run that has not ended."""
        now = time.time()
        every = [run for _, step_runs in fresh.values() for run in step_runs]
        for run in every:
            check_initial(run)
        with self._session() as session:
            pipeline = session.get(Pipeline, pipeline_id)
            if pipeline is None:
                raise NotFound(f"no pipeline p{pipeline_id}")
            steps = {
                s.name: s
                for s in session.exec(
                    select(PipelineStep).where(PipelineStep.pipeline_id == pipeline_id)
                ).all()
            }
            for name in fresh:
                step = steps.get(name)
                if step is None:
                    raise NotFound(f"pipeline p{pipeline_id} has no step {name!r}")
                busy = [
                    r for r in session.exec(_current_runs(step)).all() if not r.state.is_terminal
                ]
                if busy or (step.kind == "register" and step.state is RunState.RUNNING):
                    raise StoreError(
                        f"step {name} of p{pipeline_id} has not ended; cancel it first or "
                        "wait for it"
                    )
            for name, (sweep, step_runs) in fresh.items():
                step = steps[name]
                _store_step_runs(session, pipeline_id, name, sweep, step_runs, now)
                for run in step_runs:
                    record_queued(
                        session, run, actor=actor, reason=reason, now=now, track=self.track
                    )
                step.opened_at = None
                step.updated_at = now
                if step.kind == "register":
                    step.state, step.reason, step.result_json = RunState.QUEUED, None, None
                    step.ended_at, step.model_run_id = None, None
                elif sweep is not None:
                    step.sweep_id = sweep.id
                elif step_runs:
                    step.run_id = step_runs[0].id
                session.add(step)
            pipeline.ended_at = None
            pipeline.outcome = None
            pipeline.updated_at = now
            session.add(pipeline)
        return every


def _store_step_runs(
    session: Session,
    pipeline_id: int,
    name: str,
    sweep: Sweep | None,
    runs: Sequence[Run],
    now: float,
) -> None:
    """A step's new runs (and a sweep step's Sweep) added to the session, gated, naming their
    pipeline and step, and flushed so they have ids; their first events are the caller's."""
    if sweep is not None:
        sweep.created_at = sweep.created_at or now
        sweep.updated_at = now
        session.add(sweep)
        session.flush()
    for run in runs:
        run.sweep_id = sweep.id if sweep is not None else None
        run.pipeline_id = pipeline_id
        run.pipeline_step = name
        run.gated = True
        run.created_at = run.created_at or now
        run.updated_at = now
        session.add(run)
    session.flush()


def _every_run(runs: dict[str, StepRuns]) -> list[Run]:
    return [run for _, step_runs in runs.values() for run in step_runs]


def store_pipeline(
    session: Session,
    pipeline: Pipeline,
    steps: Sequence[PipelineStep],
    runs: dict[str, StepRuns],
    actor: str,
    reason: str,
    *,
    now: float,
    track: bool,
) -> list[Run]:
    """Within the caller's transaction: the pipeline, its steps and each spec step's runs, as
    `add_pipeline` stores them (a schedule's firing stores them with its record, so that a
    firing repeated after a crash queues nothing twice). Returns every run queued; the runs
    must have been checked (check_initial) before the transaction."""
    every = _every_run(runs)
    pipeline.created_at = pipeline.created_at or now
    pipeline.updated_at = now
    session.add(pipeline)
    session.flush()
    for name, (sweep, step_runs) in runs.items():
        _store_step_runs(session, pipeline.id or 0, name, sweep, step_runs, now)
    for run in every:
        record_queued(session, run, actor=actor, reason=reason, now=now, track=track)
    for step in steps:
        sweep, step_runs = runs.get(step.name, (None, ()))
        step.pipeline_id = pipeline.id or 0
        step.sweep_id = sweep.id if sweep is not None else None
        step.run_id = step_runs[0].id if sweep is None and step_runs else None
        if step.kind == "register":
            step.state = RunState.QUEUED
        step.updated_at = now
        session.add(step)
    return every


def _current_runs(step: PipelineStep) -> SelectOfScalar[Run]:
    """The query for a step's current runs: its run, or its sweep's points (none: register)."""
    if step.sweep_id is not None:
        return select(Run).where(Run.sweep_id == step.sweep_id)
    return select(Run).where(Run.id == (step.run_id if step.run_id is not None else -1))
