"""Schedules and their firings (hpcops schedule): the source of truth for what fires when, and
the record of each firing and the run it queued."""

from __future__ import annotations

import time
from typing import Unpack

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from hpcops.cadence import overlap_reason
from hpcops.errors import InvalidInput, NotFound
from hpcops.states import TERMINAL_STATES
from hpcops.store.engine import Database
from hpcops.store.models import Firing, Run, Schedule, ScheduleUpdate, apply_fields
from hpcops.store.runs import check_initial, record_queued

# A firing claimed (its time came due) whose run is still being prepared.
FIRING_PENDING = "pending"


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
        if run is not None:
            check_initial(run)
        now = time.time()
        with self._session() as session:
            existing = _firing_at(session, firing.schedule_id, firing.scheduled_for)
            if existing is not None and existing.outcome != FIRING_PENDING:
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
            if run is not None:
                active = _active_scheduled_run(session, firing.schedule_id)
                skip = overlap_reason(
                    active[0] if active else None, active[1] if active else None, allow_overlap
                )
                if skip is not None:
                    firing.outcome, firing.reason, run = "skipped", skip, None
            if run is not None:
                firing.data_json = run.data_json
                run.schedule_id = firing.schedule_id
                run.created_at = run.created_at or now
                run.updated_at = now
                session.add(run)
                session.flush()
                firing.run_id = run.id
                firing.outcome = "submitted"
            session.add(firing)
            session.flush()
            if run is not None:
                run.firing_id = firing.id
                session.add(run)
                record_queued(
                    session,
                    run,
                    actor=run.owner,
                    reason=f"{run_note}, firing {firing.id}",
                    now=now,
                    track=self.track,
                )
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
        """The newest firings of a schedule, each with its run's state now (None: no run)."""
        query = (
            select(Firing, Run.state)
            .join(Run, col(Run.id) == col(Firing.run_id), isouter=True)
            .where(Firing.schedule_id == schedule_id)
            .order_by(col(Firing.id).desc())
            .limit(limit)
        )
        with self._session() as session:
            return [(f, state) for f, state in session.exec(query).all()]

    def latest_firings(self) -> dict[int, tuple[Firing, str | None]]:
        """schedule id -> its newest firing and that firing's run state."""
        newest = sa_select(func.max(Firing.id)).group_by(col(Firing.schedule_id)).scalar_subquery()
        query = (
            select(Firing, Run.state)
            .join(Run, col(Run.id) == col(Firing.run_id), isouter=True)
            .where(col(Firing.id).in_(newest))
        )
        with self._session() as session:
            return {f.schedule_id: (f, state) for f, state in session.exec(query).all()}


def _firing_at(session: Session, schedule_id: int, scheduled_for: float) -> Firing | None:
    """The record of one schedule's firing for one scheduled time (unique), if any."""
    query = select(Firing).where(
        Firing.schedule_id == schedule_id, Firing.scheduled_for == scheduled_for
    )
    return session.exec(query).first()


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
