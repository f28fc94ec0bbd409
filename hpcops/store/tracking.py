"""The MLflow outbox (TrackingOp) and the relay's cursors: what the tracking thread owes the
server and how far it has copied each run's file store (hpcops/tracking/worker.py, relay.py)."""

from __future__ import annotations

import time
from typing import Unpack

from sqlalchemy import func
from sqlmodel import Session, col, select

from hpcops.errors import NotFound, StoreError
from hpcops.states import RunState
from hpcops.store.engine import Database
from hpcops.store.models import RelayCursor, Run, TrackingFields, TrackingOp, apply_fields


def tracking_ops_for(from_state: str | None, to_state: str) -> list[str]:
    """The MLflow operations a state change owes (the outbox's rule; pure).

    Queued: the record is created. Slurm took the job (a submission confirmed, or adopted by
    token after a crash): its job id and script. Ended, from wherever: the record is closed. An
    attempt ended and the next one queued: that attempt's figures and logs, the record stays
    open. An ended run queued again by `hpcops retry`: the record is reopened.
    """
    if from_state == to_state:
        return []
    if from_state is None:
        return ["create"]
    if to_state == RunState.QUEUED.value:
        if RunState(from_state).is_terminal:
            return ["reopen"]
        if from_state in (RunState.STAGING.value, RunState.PENDING.value, RunState.RUNNING.value):
            return ["attempt"]
        return []
    if RunState(to_state).is_terminal:
        return ["close"]
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
    if not track:
        return
    for kind in tracking_ops_for(from_state, to_state):
        about = None if kind == "create" else attempt
        session.add(TrackingOp(run_id=run_id, kind=kind, created_at=now, attempt=about))


class TrackingTables(Database):
    """The outbox, the relay's cursors, and the MLflow fields of runs."""

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
