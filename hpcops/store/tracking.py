"""The MLflow outbox (TrackingOp) and the relay's cursors: what the tracking thread owes the
server and how far it has copied each run's file store (hpcops/tracking/worker.py, relay.py).

A point of a sweep also owes its sweep's parent record (kind "sweep"): those operations form a
lane of their own per run, so that a parent the server refuses never holds up the point's own
record (hpcops/tracking/parents.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Unpack

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from hpcops.errors import NotFound, StoreError
from hpcops.states import RunState
from hpcops.store.engine import Database
from hpcops.store.models import (
    Pipeline,
    RelayCursor,
    Run,
    TrackingFields,
    TrackingOp,
    apply_fields,
)

SWEEP_OP = "sweep"


@dataclass(frozen=True)
class BestPoint:
    run_id: int
    index: int
    objective: float
    mlflow_run_id: str | None


@dataclass(frozen=True)
class SweepStanding:
    """A sweep's points as its MLflow parent needs them (TrackingTables.sweep_standing)."""

    states: dict[str, int]  # the points' latest runs, by state
    last_end: float | None  # when the last of them ended
    best: BestPoint | None  # the best that COMPLETED with an objective (a tie: lower index)
    ended_before: int  # points ended by the time the run asked about did, itself included

    @property
    def points(self) -> int:
        return sum(self.states.values())

    @property
    def ended(self) -> int:
        return sum(n for state, n in self.states.items() if RunState(state).is_terminal)


def tracking_ops_for(from_state: str | None, to_state: str, *, point: bool = False) -> list[str]:
    """The MLflow operations a state change owes (the outbox's rule; pure).

    Queued: the record is created. Slurm took the job (a submission confirmed, or adopted by
    token after a crash): its job id and script. Ended, from wherever: the record is closed. An
    attempt ended and the next one queued: that attempt's figures and logs, the record stays
    open. An ended run queued again by `hpcops retry`: the record is reopened.

    A point of a sweep (`point`) also owes its sweep's parent record: before its own record is
    created (the parent is made first, so the point's record is created under it) and after
    it is closed (the point's objective ranked, the parent ended when every point has), and
    when `hpcops retry` reopens it (a parent that had ended runs again; the next close ends it).
    """
    if from_state == to_state:
        return []
    if from_state is None:
        return [SWEEP_OP, "create"] if point else ["create"]
    if to_state == RunState.QUEUED.value:
        if RunState(from_state).is_terminal:
            # A point's parent may have ended with it: it runs again until the point ends.
            return ["reopen", SWEEP_OP] if point else ["reopen"]
        if from_state in (RunState.STAGING.value, RunState.PENDING.value, RunState.RUNNING.value):
            return ["attempt"]
        return []
    if RunState(to_state).is_terminal:
        return ["close", SWEEP_OP] if point else ["close"]
    if from_state == RunState.SUBMITTING.value and to_state in (
        RunState.STAGING.value,
        RunState.PENDING.value,
        RunState.RUNNING.value,
    ):
        return ["submitted"]
    return []


def owe_tracking(
    session: Session,
    run_id: int,
    from_state: str | None,
    to_state: str,
    now: float,
    *,
    track: bool,
    attempt: int | None = None,
) -> None:
    """Outbox rows for a state change, in the transaction that makes the change; `attempt`: the
    attempt they are about (TrackingOp.attempt)."""
    if not track or from_state == to_state:
        return
    run = session.get(Run, run_id)  # in the session already: no query
    point = run is not None and run.sweep_id is not None
    for kind in tracking_ops_for(from_state, to_state, point=point):
        about = None if kind in ("create", SWEEP_OP) else attempt
        session.add(TrackingOp(run_id=run_id, kind=kind, created_at=now, attempt=about))


class TrackingTables(Database):
    """The outbox, the relay's cursors, and the MLflow fields of runs."""

    def tracking_due(self, now: float, limit: int = 200) -> list[TrackingOp]:
        """For each run, its oldest undone operation, if it is due: a run's operations are done
        in order (no close before the create), while one run's wait holds up no other.

        A sweep point's parent operations ("sweep") are a second lane of the run: the oldest
        undone one is due when none of the run's own operations before it is undone (the
        parent ranks a point after its record is closed), and it never holds up the run's
        own. Oldest first."""
        query = (
            select(TrackingOp).where(col(TrackingOp.done_at).is_(None)).order_by(col(TrackingOp.id))
        )
        with self._session() as session:
            ops = list(session.exec(query.limit(limit * 4)).all())
        own: dict[int, TrackingOp] = {}
        parent: dict[int, TrackingOp] = {}
        for op in ops:
            (parent if op.kind == SWEEP_OP else own).setdefault(op.run_id, op)
        first = list(own.values())
        for run_id, op in parent.items():
            before = own.get(run_id)
            if before is None or (op.id or 0) < (before.id or 0):
                first.append(op)
        due = sorted((op for op in first if op.not_before <= now), key=lambda op: op.id or 0)
        return due[:limit]

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

    def sweep_standing(self, sweep_id: int, run_id: int, mode: str | None) -> SweepStanding:
        """Where a sweep stands, over each point's latest run (a rerun replaces its point's
        earlier run), computed in SQL: a "sweep" operation per point must not read every point
        (a 1,000-point sweep would read a million rows)."""
        latest = (
            sa_select(func.max(col(Run.id)))
            .where(col(Run.sweep_id) == sweep_id)
            .where(col(Run.sweep_index).is_not(None))
            .group_by(col(Run.sweep_index))
        )
        states = sa_select(col(Run.state), func.count(), func.max(col(Run.ended_at))).where(
            col(Run.id).in_(latest)
        )
        ranked = col(Run.objective).asc() if mode == "min" else col(Run.objective).desc()
        best = (
            sa_select(col(Run.id), col(Run.sweep_index), col(Run.objective), col(Run.mlflow_run_id))
            .where(col(Run.id).in_(latest))
            .where(col(Run.state) == RunState.COMPLETED.value)
            .where(col(Run.objective).is_not(None))
            .order_by(ranked, col(Run.sweep_index), col(Run.id))
            .limit(1)
        )
        ended_states = [s.value for s in RunState if s.is_terminal]
        with self._session() as session:
            conn = session.connection()
            counts: dict[str, int] = {}
            last_end: float | None = None
            for state, n, ended_at in conn.execute(states.group_by(col(Run.state))).all():
                counts[str(state)] = int(n)
                if str(state) in ended_states and ended_at is not None:
                    last_end = max(last_end or 0.0, float(ended_at))
            top = conn.execute(best).first()
            own = session.get(Run, run_id)
            before = 0
            if own is not None and own.state in ended_states and own.ended_at is not None:
                earlier = (
                    sa_select(func.count())
                    .where(col(Run.id).in_(latest))
                    .where(col(Run.state).in_(ended_states))
                    .where(
                        (col(Run.ended_at) < own.ended_at)
                        | ((col(Run.ended_at) == own.ended_at) & (col(Run.id) <= run_id))
                    )
                )
                before = int(conn.execute(earlier).scalar_one())
        return SweepStanding(
            states=counts,
            last_end=last_end,
            best=(
                None
                if top is None  # the query asks for an objective: never None here
                else BestPoint(int(top[0] or 0), int(top[1] or 0), float(top[2] or 0.0), top[3])
            ),
            ended_before=before,
        )

    def sweep_closes_owed(self, sweep_id: int) -> bool:
        """Whether a point of the sweep still waits for its record to be closed (its objective
        is read then): the parent is ended only after the last one."""
        query = (
            select(func.count())
            .select_from(TrackingOp)
            .join(Run, col(Run.id) == col(TrackingOp.run_id))
            .where(Run.sweep_id == sweep_id)
            .where(TrackingOp.kind == "close")
            .where(col(TrackingOp.done_at).is_(None))
        )
        with self._session() as session:
            return int(session.exec(query).one()) > 0

    def pipelines_to_track(self) -> list[Pipeline]:
        """The pipelines whose MLflow parent the tracker still owes something: open ones (their
        steps' records to nest, a register step to promote) and ended ones whose parent is not
        ended yet (hpcops/tracking/pipelines.py). One query on a small table; none most passes."""
        query = (
            select(Pipeline)
            .where(col(Pipeline.ended_at).is_(None) | col(Pipeline.closed_at).is_(None))
            .order_by(col(Pipeline.id))
        )
        with self._session() as session:
            return list(session.exec(query).all())

    def pipeline_ops_owed(self, pipeline_id: int) -> bool:
        """Whether a run of the pipeline (a sweep step's points included) still owes its record
        an operation: the pipeline's parent is ended only after its steps' records are."""
        query = (
            select(func.count())
            .select_from(TrackingOp)
            .join(Run, col(Run.id) == col(TrackingOp.run_id))
            .where(Run.pipeline_id == pipeline_id)
            .where(col(TrackingOp.done_at).is_(None))
        )
        with self._session() as session:
            return int(session.exec(query).one()) > 0

    def tracking_backlog(self) -> int:
        query = (
            select(func.count()).select_from(TrackingOp).where(col(TrackingOp.done_at).is_(None))
        )
        with self._session() as session:
            return int(session.exec(query).one())

    def set_tracking_fields(self, run_id: int, **fields: Unpack[TrackingFields]) -> None:
        """MLflow ids on a run: no state change, no event."""
        with self._session() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise NotFound(f"no run {run_id}")
            apply_fields(run, fields, TrackingFields, "MLflow fields of runs")
            run.updated_at = time.time()
            session.add(run)

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
