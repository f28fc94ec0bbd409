"""Schedules and their firings (hpcops schedule): the source of truth for what fires when, and
the record of each firing and the run, or the pipeline, it queued."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Unpack

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from hpcops.cadence import overlap_reason
from hpcops.errors import InvalidInput, NotFound
from hpcops.states import TERMINAL_STATES
from hpcops.store.engine import Database
from hpcops.store.models import (
    Firing,
    Pipeline,
    PipelineStep,
    Run,
    Schedule,
    ScheduleUpdate,
    apply_fields,
)
from hpcops.store.pipelines import StepRuns, store_pipeline
from hpcops.store.runs import check_initial, record_queued

# A firing claimed (its time came due) whose run is still being prepared.
FIRING_PENDING = "pending"

# A pipeline's rows as Engine.prepare_pipeline builds them, not yet stored.
PreparedPipeline = tuple[Pipeline, Sequence[PipelineStep], dict[str, StepRuns]]


class ScheduleTables(Database):
    """The schedule and firing tables."""

    def add_schedule(self, schedule: Schedule) -> Schedule:
        """Store a new schedule; its name must not be taken by another that is not removed."""
        with self._session() as session:
            clash = session.exec(
                select(Schedule.id).where(
                    Schedule.name == schedule.name, col(Schedule.removed_at).is_(None)
                )
            ).first()
            if clash is not None:
                raise InvalidInput(
                    f"a schedule named {schedule.name!r} exists already (schedule {clash}); "
                    "choose another with --name, or remove that one first"
                )
            session.add(schedule)
        return schedule

    def schedules(self, *, include_removed: bool = False) -> list[Schedule]:
        query = select(Schedule)
        if not include_removed:
            query = query.where(col(Schedule.removed_at).is_(None))
        with self._session() as session:
            return list(session.exec(query.order_by(col(Schedule.id))).all())

    def get_schedule(self, schedule_id: int) -> Schedule:
        with self._session() as session:
            schedule = session.get(Schedule, schedule_id)
        if schedule is None:
            raise NotFound(f"no schedule {schedule_id}; `hpcops schedule ls` lists them")
        return schedule

    def find_schedule(self, ref: int | str) -> Schedule:
        """A schedule by id (removed ones too, for their history) or by the name of one that
        is not removed."""
        if isinstance(ref, int):
            return self.get_schedule(ref)
        query = select(Schedule).where(Schedule.name == ref, col(Schedule.removed_at).is_(None))
        with self._session() as session:
            found = session.exec(query).first()
        if found is None:
            raise NotFound(f"no schedule named {ref!r}; `hpcops schedule ls` lists them")
        return found

    def update_schedule(self, schedule_id: int, **fields: Unpack[ScheduleUpdate]) -> Schedule:
        with self._session() as session:
            schedule = session.get(Schedule, schedule_id)
            if schedule is None:
                raise NotFound(f"no schedule {schedule_id}")
            apply_fields(schedule, fields, ScheduleUpdate, "schedules")
            schedule.updated_at = time.time()
            session.add(schedule)
        return schedule

    def record_firing(
        self, firing: Firing, run: Run | None, *, allow_overlap: bool, run_note: str
    ) -> tuple[Firing, bool]:
        """Record a firing and, if it queues one, its run: both in one transaction, or neither.

        Idempotent per (schedule, scheduled time): when that firing is already recorded (the
        daemon died after this commit and APScheduler fires the same time again), the existing
        record comes back with False and nothing is written. With `run` and no overlap allowed,
        a run of the schedule that has not ended turns the firing into a skip, decided inside
        this transaction so that two firings at once cannot both queue.
        """
        if run is None:
            return self._record(firing, None, allow_overlap=allow_overlap)
        check_initial(run)
        queued = run

        def store(session: Session, firing: Firing, now: float) -> None:
            firing.data_json = queued.data_json
            queued.schedule_id, queued.firing_id = firing.schedule_id, firing.id
            queued.created_at = queued.created_at or now
            queued.updated_at = now
            session.add(queued)
            session.flush()
            firing.run_id = queued.id
            reason = f"{run_note}, firing {firing.id}"
            record_queued(
                session, queued, actor=queued.owner, reason=reason, now=now, track=self.track
            )

        return self._record(firing, store, allow_overlap=allow_overlap)

    def record_pipeline_firing(
        self,
        firing: Firing,
        pipeline: PreparedPipeline | None,
        *,
        allow_overlap: bool,
        note: str,
    ) -> tuple[Firing, bool]:
        """`record_firing` for a pipeline schedule: the firing's record and the pipeline it
        queues (its steps and their runs, as Store.add_pipeline stores them) in one transaction,
        once per scheduled time. A pipeline of the schedule that has not ended (ended_at unset)
        is what overlaps, as a run that has not ended does for a spec's schedule."""
        if pipeline is None:
            return self._record(firing, None, allow_overlap=allow_overlap)
        row, steps, runs = pipeline
        for _, step_runs in runs.values():
            for run in step_runs:
                check_initial(run)

        def store(session: Session, firing: Firing, now: float) -> None:
            row.schedule_id, row.firing_id = firing.schedule_id, firing.id
            for _, step_runs in runs.values():
                for run in step_runs:
                    run.schedule_id, run.firing_id = firing.schedule_id, firing.id
            reason = f"{note}, firing {firing.id}"
            store_pipeline(session, row, steps, runs, row.owner, reason, now=now, track=self.track)
            firing.pipeline_id = row.id

        return self._record(firing, store, allow_overlap=allow_overlap)

    def _record(
        self,
        firing: Firing,
        store: Callable[[Session, Firing, float], None] | None,
        *,
        allow_overlap: bool,
    ) -> tuple[Firing, bool]:
        """A firing's record, and what it queues (`store`, given the firing with its id) unless
        the overlap rule skips it: one transaction, once per (schedule, scheduled time)."""
        now = time.time()
        with self._session() as session:
            existing = _firing_at(session, firing.schedule_id, firing.scheduled_for)
            if existing is not None and (
                existing.outcome != FIRING_PENDING or existing.id != firing.id
            ):
                # Recorded already; or claimed, and only the claim's own completion (which
                # carries its id, Firer._fire_claimed) completes it: a skip planned for the same
                # time after a restart must not overwrite the run the claim is preparing.
                return existing, False
            if existing is not None:
                # Claimed before its slow part (claim_firing): complete that very record.
                existing.fired_at, existing.kind, existing.actor = (
                    firing.fired_at,
                    firing.kind,
                    firing.actor,
                )
                existing.outcome, existing.reason = firing.outcome, firing.reason
                existing.data_json = firing.data_json or existing.data_json
                firing = existing
            schedule = session.get(Schedule, firing.schedule_id)
            if schedule is None:
                raise NotFound(f"no schedule {firing.schedule_id}")
            if store is not None:
                skip = _overlap(session, schedule, allow_overlap)
                if skip is not None:
                    firing.outcome, firing.reason, store = "skipped", skip, None
            session.add(firing)
            session.flush()
            if store is not None:
                store(session, firing, now)
                firing.outcome = "submitted"
                session.add(firing)
            if firing.outcome == "error":
                schedule.last_error = firing.reason
            elif firing.outcome == "submitted":
                schedule.last_error = None
            session.add(schedule)
        return firing, True

    def claim_firing(self, firing: Firing) -> tuple[Firing, bool]:
        """Record that a scheduled time came due, before the slow part of its firing (resolving
        a branch through a fetch, reading data versions) runs in a thread of its own. A claim
        is the firing's record with outcome "pending", completed by `record_firing`; one left
        pending by a crash is found at start-up (`pending_firings`) and completed then. Returns
        the record and whether this call made it (False: the time is claimed or recorded)."""
        with self._session() as session:
            existing = _firing_at(session, firing.schedule_id, firing.scheduled_for)
            if existing is not None:
                return existing, False
            firing.outcome = FIRING_PENDING
            session.add(firing)
            session.flush()
            return firing, True

    def pending_firings(self) -> list[Firing]:
        """Firings claimed and not completed: their daemon stopped in between."""
        with self._session() as session:
            query = select(Firing).where(Firing.outcome == FIRING_PENDING)
            return list(session.exec(query.order_by(col(Firing.id))).all())

    def active_scheduled_run(self, schedule_id: int) -> tuple[int, str] | None:
        """The newest run of the schedule that has not ended (id, state), or None."""
        with self._session() as session:
            return _active_scheduled_run(session, schedule_id)

    def data_baseline(self, schedule_id: int) -> tuple[str | None, str | None]:
        """What an on-data-change check compares with: the data versions (data_json) of the run
        of the schedule's latest submitted firing, and those of a failed firing after it."""
        with self._session() as session:
            fired = session.exec(
                select(Firing.id, Run.data_json)
                .join(Run, col(Run.id) == col(Firing.run_id))
                .where(Firing.schedule_id == schedule_id, Firing.outcome == "submitted")
                .order_by(col(Firing.id).desc())
            ).first()
            failed_query = select(Firing.data_json).where(
                Firing.schedule_id == schedule_id,
                Firing.outcome == "error",
                col(Firing.data_json).is_not(None),
            )
            if fired is not None:
                failed_query = failed_query.where(col(Firing.id) > fired[0])
            failed = session.exec(failed_query.order_by(col(Firing.id).desc())).first()
        return (fired[1] if fired is not None else None), failed

    def record_check(self, schedule_id: int, *, at: float, ok: bool, result: str) -> Schedule:
        """An on-data-change check's result on its schedule. A check that could not read the
        versions sets last_error (the schedule shows as broken); the next good one clears it."""
        with self._session() as session:
            schedule = session.get(Schedule, schedule_id)
            if schedule is None:
                raise NotFound(f"no schedule {schedule_id}")
            if not ok:
                schedule.last_error = result
            elif schedule.last_check_ok is False:
                schedule.last_error = None
            schedule.last_checked_at = at
            schedule.last_check = result
            schedule.last_check_ok = ok
            session.add(schedule)
        return schedule

    def firings(self, schedule_id: int, *, limit: int = 20) -> list[tuple[Firing, str | None]]:
        """The newest firings of a schedule, each with the state now of what it queued (its run,
        or its pipeline: RUNNING until every step ended, then its outcome; None: nothing)."""
        query = (
            _with_queued_state()
            .where(Firing.schedule_id == schedule_id)
            .order_by(col(Firing.id).desc())
            .limit(limit)
        )
        with self._session() as session:
            return [_queued_state(row) for row in session.exec(query).all()]

    def latest_firings(self) -> dict[int, tuple[Firing, str | None]]:
        """schedule id -> its newest firing and the state of what it queued (as `firings`)."""
        newest = sa_select(func.max(Firing.id)).group_by(col(Firing.schedule_id)).scalar_subquery()
        query = _with_queued_state().where(col(Firing.id).in_(newest))
        with self._session() as session:
            return {
                f.schedule_id: (f, state)
                for f, state in (_queued_state(row) for row in session.exec(query).all())
            }


_QueuedRow = tuple[Firing, str | None, float | None, str | None]


def _with_queued_state() -> SelectOfScalar[Any]:
    """Firings with their run's state, and their pipeline's end and outcome."""
    return (
        select(Firing, Run.state, Pipeline.ended_at, Pipeline.outcome)  # type: ignore[return-value]
        .join(Run, col(Run.id) == col(Firing.run_id), isouter=True)
        .join(Pipeline, col(Pipeline.id) == col(Firing.pipeline_id), isouter=True)
    )


def _queued_state(row: _QueuedRow) -> tuple[Firing, str | None]:
    firing, run_state, ended_at, outcome = row
    if firing.pipeline_id is not None:
        return firing, (outcome or "RUNNING") if ended_at is not None else "RUNNING"
    return firing, run_state


def _firing_at(session: Session, schedule_id: int, scheduled_for: float) -> Firing | None:
    """The record of one schedule's firing for one scheduled time (unique), if any."""
    query = select(Firing).where(
        Firing.schedule_id == schedule_id, Firing.scheduled_for == scheduled_for
    )
    return session.exec(query).first()


def _overlap(session: Session, schedule: Schedule, allow_overlap: bool) -> str | None:
    """Why a firing of the schedule is skipped (what an earlier firing queued has not ended and
    overlap is not allowed), or None."""
    assert schedule.id is not None
    if allow_overlap:
        return None
    if schedule.kind == "pipeline":
        open_id = session.exec(
            select(Pipeline.id)
            .where(Pipeline.schedule_id == schedule.id, col(Pipeline.ended_at).is_(None))
            .order_by(col(Pipeline.id).desc())
        ).first()
        if open_id is None:
            return None
        return overlap_reason(
            f"p{open_id}", "running (a step has not ended)", False, what="pipeline"
        )
    active = _active_scheduled_run(session, schedule.id)
    return overlap_reason(active[0] if active else None, active[1] if active else None, False)


def _active_scheduled_run(session: Session, schedule_id: int) -> tuple[int, str] | None:
    active = session.exec(
        select(Run.id, Run.state)
        .where(
            Run.schedule_id == schedule_id,
            col(Run.state).not_in([s.value for s in TERMINAL_STATES]),
            # Its job wrote its exit marker or left squeue: the command is over, only sacct's
            # final record is awaited.
            col(Run.end_seen_at).is_(None),
        )
        .order_by(col(Run.id).desc())
    ).first()
    if active is None or active[0] is None:
        return None
    return active[0], active[1]
