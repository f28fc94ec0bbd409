"""SQLite (WAL) through sqlmodel. Only the daemon opens it (DESIGN.md, decision 1).

Every transaction starts with BEGIN IMMEDIATE: a read-then-write in a deferred transaction fails at
once with "database is locked" when another connection writes (NOTES-STACK: 921 of 2000 in a test),
while IMMEDIATE waits its turn under the busy timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel, col, create_engine, select

from hpcops.errors import InvalidInput, NotFound, StoreError
from hpcops.scheduling.timing import overlap_reason
from hpcops.states import IN_SLURM_STATES, TERMINAL_STATES, RunState
from hpcops.store.models import (
    Audit,
    Event,
    Firing,
    QuotaOverride,
    RelayCursor,
    Run,
    Schedule,
    TrackingOp,
)

_BUSY_TIMEOUT_S = 30.0


def _configure(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across a process crash (kill -9) in WAL mode; only a power loss can
        # drop the last commits, and the reconciliation by token repairs that.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def tracking_ops_for(from_state: str | None, to_state: str) -> list[str]:
    """The MLflow operations a state change owes (the outbox's rule; pure).

    Queued: the record is created. Slurm took the job (a submission confirmed, or adopted by
    token after a crash): its job id and script. Ended, from wherever: the record is closed.
    """
    if from_state == to_state:
        return []
    if from_state is None:
        return ["create"]
    if RunState(to_state).is_terminal:
        return ["close"]
    if from_state == RunState.SUBMITTING.value and to_state in (
        RunState.STAGING.value,
        RunState.PENDING.value,
        RunState.RUNNING.value,
    ):
        return ["submitted"]
    return []


class Store:
    def __init__(self, path: Path, *, track: bool = False) -> None:
        """`track`: write the MLflow outbox (TrackingOp) with every state change that owes one."""
        self.path = path
        self.track = track
        try:
            self._engine = create_engine(
                f"sqlite:///{path}",
                connect_args={"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False},
            )
            _configure(self._engine)
            SQLModel.metadata.create_all(self._engine)
            self._add_missing_columns()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from exc

    def close(self) -> None:
        self._engine.dispose()

    @property
    def engine(self) -> Engine:
        """For APScheduler's job store: the same file with the same BEGIN IMMEDIATE and busy
        timeout, so its writes queue behind ours instead of failing with "database is locked"."""
        return self._engine

    def _add_missing_columns(self) -> None:
        """Additive migration: a column added to a model since the database was made is added
        to the table (nullable), so an upgraded daemon opens an older home."""
        with self._engine.begin() as conn:
            for table in SQLModel.metadata.sorted_tables:
                have = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table.name})")}
                for column in table.columns:
                    if column.name not in have:
                        kind = column.type.compile(dialect=self._engine.dialect)
                        default = getattr(column.default, "arg", None)
                        literal = (
                            f" DEFAULT {default!r}"
                            if isinstance(default, int | float | str) and not callable(default)
                            else ""
                        )
                        conn.exec_driver_sql(
                            f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{literal}'
                        )

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.path}: {exc}") from exc

    # --- runs ------------------------------------------------------------------------------

    def add_run(self, run: Run, actor: str, reason: str = "submitted") -> Run:
        now = time.time()
        run.created_at = run.created_at or now
        run.updated_at = now
        with self._session() as session:
            session.add(run)
            session.flush()
            assert run.id is not None
            session.add(
                Event(
                    run_id=run.id,
                    at=now,
                    actor=actor,
                    from_state=None,
                    to_state=run.state,
                    reason=reason,
                )
            )
            self._owe_tracking(session, run.id, None, run.state, now)
        return run

    def _owe_tracking(
        self, session: Session, run_id: int, from_state: str | None, to_state: str, now: float
    ) -> None:
        """Outbox rows for a state change, in the transaction that makes the change."""
        if not self.track:
            return
        for kind in tracking_ops_for(from_state, to_state):
            session.add(TrackingOp(run_id=run_id, kind=kind, created_at=now))

    def add_runs(self, runs: Sequence[Run], actor: str) -> list[Run]:
        """Several runs in one transaction: all are queued, or none (a batch `submit`)."""
        now = time.time()
        with self._session() as session:
            for run in runs:
                run.created_at = run.created_at or now
                run.updated_at = now
                session.add(run)
            session.flush()
            for run in runs:
                assert run.id is not None
                session.add(
                    Event(
                        run_id=run.id,
                        at=now,
                        actor=actor,
                        from_state=None,
                        to_state=run.state,
                        reason="submitted",
                    )
                )
                self._owe_tracking(session, run.id, None, run.state, now)
        return list(runs)

    def get(self, run_id: int) -> Run:
        with self._session() as session:
            run = session.get(Run, run_id)
        if run is None:
            raise NotFound(f"no run {run_id}; `hpcops ls` lists the runs")
        return run

    def list_runs(
        self,
        states: Iterable[RunState] | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Run]:
        query = select(Run)
        if states is not None:
            query = query.where(col(Run.state).in_([s.value for s in states]))
        order = col(Run.id).desc() if newest_first else col(Run.id)
        query = query.order_by(order)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return list(session.exec(query).all())

    def in_slurm(self) -> list[Run]:
        return self.list_runs(IN_SLURM_STATES)

    def count_in_slurm(self) -> int:
        query = (
            select(func.count())
            .select_from(Run)
            .where(col(Run.state).in_([s.value for s in IN_SLURM_STATES]))
        )
        with self._session() as session:
            return int(session.exec(query).one())

    def queued_summaries(self) -> list[tuple[int, str, int, float, int, int, str | None]]:
        """(id, owner, priority, created_at, cpus, gpus, partition) of every QUEUED run: the
        release policy's input, read as plain rows (10,000 ORM objects a tick would cost)."""
        # SQLAlchemy's own select: sqlmodel's typing stops at four columns.
        query = sa_select(
            col(Run.id),
            col(Run.owner),
            col(Run.priority),
            col(Run.created_at),
            col(Run.cpus),
            col(Run.gpus),
            col(Run.partition),
        ).where(col(Run.state) == RunState.QUEUED.value)
        with self._session() as session:
            rows = session.connection().execute(query).all()
        return [(int(r[0] or 0), r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def runs_by_ids(self, run_ids: Sequence[int]) -> list[Run]:
        if not run_ids:
            return []
        query = select(Run).where(col(Run.id).in_(list(run_ids)))
        with self._session() as session:
            found = {r.id: r for r in session.exec(query).all()}
        return [found[i] for i in run_ids if i in found]

    def owners_by_job(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Slurm job id -> the hpcops owner, for the jobs that are hpcops runs."""
        owners: dict[str, str] = {}
        ids = list(job_ids)
        # In chunks: SQLite caps the variables of one statement, and a week of a busy lab's
        # accounting (array jobs by hand included) can hold tens of thousands of job ids.
        for start in range(0, len(ids), 500):
            query = select(Run.slurm_job_id, Run.owner).where(
                col(Run.slurm_job_id).in_(ids[start : start + 500])
            )
            with self._session() as session:
                owners.update({j: o for j, o in session.exec(query).all() if j is not None})
        return owners

    def max_queued_priority(self) -> int | None:
        query = select(func.max(Run.priority)).where(Run.state == RunState.QUEUED.value)
        with self._session() as session:
            value = session.exec(query).one()
        return int(value) if value is not None else None

    def counts_by_state(self) -> dict[str, int]:
        query = select(Run.state, func.count()).group_by(Run.state)
        with self._session() as session:
            return {state: int(n) for state, n in session.exec(query).all()}

    def transition(
        self,
        run_id: int,
        to_state: RunState | None,
        *,
        actor: str,
        note: str = "",
        expect: Iterable[RunState] | None = None,
        **fields: Any,
    ) -> Run | None:
        """Change a run atomically; with `expect`, only if it is still in one of those states.

        Returns the updated run, or None when `expect` did not hold (someone else moved it first).
        A state change writes an event; a field-only update writes one only if a note is given.
        """
        now = time.time()
        with self._session() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise NotFound(f"no run {run_id}")
            if expect is not None and run.state not in {s.value for s in expect}:
                return None
            from_state = run.state
            for key, value in fields.items():
                if not hasattr(run, key):
                    raise StoreError(f"runs have no field {key!r}")
                setattr(run, key, value)
            if to_state is not None:
                run.state = to_state.value
            run.updated_at = now
            session.add(run)
            if (to_state is not None and to_state.value != from_state) or note:
                session.add(
                    Event(
                        run_id=run_id,
                        at=now,
                        actor=actor,
                        from_state=from_state,
                        to_state=run.state,
                        reason=note,
                    )
                )
            self._owe_tracking(session, run_id, from_state, run.state, now)
            return run

    # --- events ----------------------------------------------------------------------------

    def events(self, run_id: int) -> list[Event]:
        self.get(run_id)
        query = select(Event).where(Event.run_id == run_id).order_by(col(Event.id))
        with self._session() as session:
            return list(session.exec(query).all())

    # --- audit -----------------------------------------------------------------------------

    def audit(self, entry: Audit) -> None:
        with self._session() as session:
            session.add(entry)

    def audit_log(self, *, limit: int = 200, target: str | None = None) -> list[Audit]:
        query = select(Audit)
        if target is not None:
            query = query.where(Audit.target == target)
        query = query.order_by(col(Audit.id).desc()).limit(limit)
        with self._session() as session:
            return list(session.exec(query).all())

    # --- quota overrides -------------------------------------------------------------------

    def quota_overrides(self) -> list[QuotaOverride]:
        with self._session() as session:
            return list(session.exec(select(QuotaOverride)).all())

    def set_quota(self, override: QuotaOverride) -> QuotaOverride | None:
        """Store an override; return the one it replaced."""
        with self._session() as session:
            old = session.get(QuotaOverride, (override.scope, override.resource))
            before = QuotaOverride.model_validate(old.model_dump()) if old else None
            if old is not None:
                session.delete(old)
                session.flush()
            session.add(override)
        return before

    # --- schedules -------------------------------------------------------------------------

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

    def update_schedule(self, schedule_id: int, **fields: Any) -> Schedule:
        with self._session() as session:
            schedule = session.get(Schedule, schedule_id)
            if schedule is None:
                raise NotFound(f"no schedule {schedule_id}")
            for key, value in fields.items():
                if not hasattr(schedule, key):
                    raise StoreError(f"schedules have no field {key!r}")
                setattr(schedule, key, value)
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
        now = time.time()
        with self._session() as session:
            existing = session.exec(
                select(Firing).where(
                    Firing.schedule_id == firing.schedule_id,
                    Firing.scheduled_for == firing.scheduled_for,
                )
            ).first()
            if existing is not None:
                return existing, False
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
                assert run.id is not None
                run.firing_id = firing.id
                session.add(run)
                session.add(
                    Event(
                        run_id=run.id,
                        at=now,
                        actor=run.owner,
                        from_state=None,
                        to_state=run.state,
                        reason=f"{run_note}, firing {firing.id}",
                    )
                )
                self._owe_tracking(session, run.id, None, run.state, now)
            if firing.outcome == "error":
                schedule.last_error = firing.reason
            elif firing.outcome == "submitted":
                schedule.last_error = None
            session.add(schedule)
        return firing, True

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

    # --- the MLflow outbox -----------------------------------------------------------------

    def tracking_due(self, now: float, limit: int = 200) -> list[TrackingOp]:
        """For each run, its oldest undone operation, if it is due: a run's operations are done
        in order (no close before the create), while one run's wait holds up no other."""
        query = (
            select(TrackingOp).where(col(TrackingOp.done_at).is_(None)).order_by(col(TrackingOp.id))
        )
        with self._session() as session:
            ops = list(session.exec(query.limit(limit * 4)).all())
        first: dict[int, TrackingOp] = {}
        for op in ops:
            first.setdefault(op.run_id, op)
        return [op for op in first.values() if op.not_before <= now][:limit]

    def tracking_attempt(self, op_id: int) -> TrackingOp:
        """Count an attempt before it is made: after a crash, attempts > 0 says the server may
        already hold what the attempt created."""
        with self._session() as session:
            op = session.get(TrackingOp, op_id)
            if op is None:
                raise StoreError(f"no tracking operation {op_id}")
            op.attempts += 1
            session.add(op)
            return op

    def tracking_done(self, op_id: int, *, error: str | None = None, failed: bool = False) -> None:
        with self._session() as session:
            op = session.get(TrackingOp, op_id)
            if op is not None:
                op.done_at = time.time()
                op.failed = failed
                op.last_error = error
                session.add(op)

    def tracking_retry(self, op_id: int, *, not_before: float, error: str) -> None:
        with self._session() as session:
            op = session.get(TrackingOp, op_id)
            if op is not None:
                op.not_before = not_before
                op.last_error = error
                session.add(op)

    def tracking_ops(self, run_id: int) -> list[TrackingOp]:
        query = select(TrackingOp).where(TrackingOp.run_id == run_id).order_by(col(TrackingOp.id))
        with self._session() as session:
            return list(session.exec(query).all())

    def tracking_backlog(self) -> int:
        query = (
            select(func.count()).select_from(TrackingOp).where(col(TrackingOp.done_at).is_(None))
        )
        with self._session() as session:
            return int(session.exec(query).one())

    def set_tracking_fields(self, run_id: int, **fields: Any) -> None:
        """MLflow ids on a run: no state change, no event."""
        self.transition(run_id, None, actor="daemon", **fields)

    def find_by_mlflow_run(self, mlflow_run_id: str) -> Run | None:
        query = select(Run).where(Run.mlflow_run_id == mlflow_run_id)
        with self._session() as session:
            return session.exec(query).first()

    def relaying(self) -> list[Run]:
        """Runs whose job logs into a relay file store and whose server record exists."""
        query = (
            select(Run)
            .where(col(Run.mlflow_relay_dir).is_not(None))
            .where(col(Run.mlflow_run_id).is_not(None))
            .where(
                col(Run.state).in_(
                    [RunState.STAGING.value, RunState.PENDING.value, RunState.RUNNING.value]
                )
            )
        )
        with self._session() as session:
            return list(session.exec(query).all())

    def relay_cursors(self, run_id: int) -> dict[str, str]:
        query = select(RelayCursor).where(RelayCursor.run_id == run_id)
        with self._session() as session:
            return {c.key: c.value for c in session.exec(query).all()}

    def save_relay_cursors(self, run_id: int, cursors: dict[str, str]) -> None:
        with self._session() as session:
            for key, value in cursors.items():
                session.merge(RelayCursor(run_id=run_id, key=key, value=value))


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
