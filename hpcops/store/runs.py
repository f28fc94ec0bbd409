"""Runs and their append-only events: how a run is queued, read, and moved from state to state.

Every state change is checked against states.TRANSITIONS and written with its event (and the
MLflow operations it owes, and the Attempt row of an attempt that ended) in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Unpack

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from hpcops.errors import IllegalTransition, NotFound, StoreError
from hpcops.states import IN_SLURM_STATES, INITIAL_STATES, TRANSITIONS, RunState, may_transition
from hpcops.store.engine import Database
from hpcops.store.models import Attempt, AttemptEnd, Event, Run, RunUpdate, Sweep, apply_fields
from hpcops.store.tracking import owe_tracking


def record_queued(
    session: Session, run: Run, *, actor: str, reason: str, now: float, track: bool
) -> None:
    """A new run's first event (None -> its state) and outbox rows, in the transaction that
    inserts it; the run must have its id (flushed)."""
    assert run.id is not None
    session.add(
        Event(
            run_id=run.id, at=now, actor=actor, from_state=None, to_state=run.state, reason=reason
        )
    )
    owe_tracking(session, run.id, None, run.state, now, track=track)


def check_initial(run: Run) -> None:
    """A run is created only in a state of INITIAL_STATES (a plain name is taken as its state)."""
    run.state = RunState(run.state)
    if run.state not in INITIAL_STATES:
        raise IllegalTransition(
            f"a new run cannot start {run.state}: runs start "
            + ", ".join(sorted(INITIAL_STATES))
            + " (INITIAL_STATES in hpcops/states.py)"
        )


class RunTables(Database):
    """The run and event tables."""

    def add_run(self, run: Run, actor: str, reason: str = "submitted") -> Run:
        check_initial(run)
        now = time.time()
        run.created_at = run.created_at or now
        run.updated_at = now
        with self._session() as session:
            session.add(run)
            session.flush()
            record_queued(session, run, actor=actor, reason=reason, now=now, track=self.track)
        return run

    def add_runs(
        self,
        runs: Sequence[Run],
        actor: str,
        *,
        sweeps: Sequence[tuple[Sweep, Sequence[Run]]] = (),
        reason: str = "submitted",
    ) -> list[Run]:
        """Several runs, and sweeps with their points' runs, in one transaction: all are
        queued, or none (a batch `submit`). Returns every run queued, the sweeps' last; each
        point's run gets its sweep's id."""
        points = [run for _, sweep_runs in sweeps for run in sweep_runs]
        for run in [*runs, *points]:
            check_initial(run)
        now = time.time()
        with self._session() as session:
            for sweep, sweep_runs in sweeps:
                if not sweep_runs:
                    raise StoreError(f"sweep {sweep.name!r} has no points to queue")
                sweep.created_at = sweep.created_at or now
                sweep.updated_at = now
                session.add(sweep)
            session.flush()
            for sweep, sweep_runs in sweeps:
                for run in sweep_runs:
                    run.sweep_id = sweep.id
            for run in [*runs, *points]:
                run.created_at = run.created_at or now
                run.updated_at = now
                session.add(run)
            session.flush()
            for run in [*runs, *points]:
                record_queued(session, run, actor=actor, reason=reason, now=now, track=self.track)
        return [*runs, *points]

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

    def queued_summaries(
        self,
    ) -> list[tuple[int, str, int, float, int, int, str | None, int | None, float | None]]:
        """(id, owner, priority, queued at, cpus, gpus, partition, sweep_id, not before) of
        every QUEUED run that is not gated (a pipeline step waiting for the steps before it):
        the release policy's input, read as plain rows (10,000 ORM objects a tick would cost).
        Queued at: when it was last queued (a retry's next attempt), else when it was created;
        not before: a retry's back-off (None: none)."""
        # SQLAlchemy's own select: sqlmodel's typing stops at four columns.
        query = sa_select(
            col(Run.id),
            col(Run.owner),
            col(Run.priority),
            func.coalesce(col(Run.queued_at), col(Run.created_at)),
            col(Run.cpus),
            col(Run.gpus),
            col(Run.partition),
            col(Run.sweep_id),
            col(Run.retry_not_before),
        ).where(
            col(Run.state) == RunState.QUEUED.value,
            # A pipeline's step waiting for the steps before it is no candidate at all.
            func.coalesce(col(Run.gated), False).is_(False),
        )
        with self._session() as session:
            rows = session.connection().execute(query).all()
        return [
            (int(r[0] or 0), r[1], r[2], float(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows
        ]

    def data_versions(self) -> list[tuple[int, RunState, str, float]]:
        """(id, state, data_json, last used) of every run with data versions, oldest run first:
        what data/usage.py decides a gc on, read as plain rows. Last used: when the run ended,
        else when it started, else when it was queued."""
        last_used = func.coalesce(col(Run.ended_at), col(Run.started_at), col(Run.created_at))
        query = (
            sa_select(col(Run.id), col(Run.state), col(Run.data_json), last_used)
            .where(col(Run.data_json).is_not(None))
            .order_by(col(Run.id))
        )
        with self._session() as session:
            rows = session.connection().execute(query).all()
        return [(int(r[0] or 0), r[1], str(r[2]), float(r[3])) for r in rows]

    def runs_by_ids(self, run_ids: Sequence[int]) -> list[Run]:
        if not run_ids:
            return []
        query = select(Run).where(col(Run.id).in_(list(run_ids)))
        with self._session() as session:
            found = {r.id: r for r in session.exec(query).all()}
        return [found[i] for i in run_ids if i in found]

    def owners_by_job(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Slurm job id -> the hpcops owner, for the jobs that are hpcops runs: each run's
        current job and the jobs of its ended attempts (fair share counts every attempt)."""
        owners: dict[str, str] = {}
        ids = list(job_ids)
        # In chunks: SQLite caps the variables of one statement, and a week of a busy lab's
        # accounting (array jobs by hand included) can hold tens of thousands of job ids.
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            current = select(Run.slurm_job_id, Run.owner).where(col(Run.slurm_job_id).in_(chunk))
            ended = (
                select(Attempt.slurm_job_id, Run.owner)
                .join(Run, col(Run.id) == col(Attempt.run_id))
                .where(col(Attempt.slurm_job_id).in_(chunk))
            )
            with self._session() as session:
                owners.update(dict(session.exec(ended).all()))
                owners.update({j: o for j, o in session.exec(current).all() if j is not None})
        return owners

    def attempts(self, run_id: int) -> list[Attempt]:
        """The run's ended attempts, first to last (the attempt in Slurm, if any, is the run's
        own fields: number `attempts_ended + 1`)."""
        query = select(Attempt).where(Attempt.run_id == run_id).order_by(col(Attempt.number))
        with self._session() as session:
            return list(session.exec(query).all())

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
        ended: AttemptEnd | None = None,
        **fields: Unpack[RunUpdate],
    ) -> Run | None:
        """Change a run atomically; with `expect`, only if it is still in one of those states.

        Returns the updated run, or None when `expect` did not hold (someone else moved it first).
        A state change writes an event; a field-only update writes one only if a note is given.
        A change that states.TRANSITIONS does not allow raises IllegalTransition and writes
        nothing. `ended`: the run's current attempt ended so (its job ended, or was taken for
        lost): its Attempt row is written in the same transaction, numbered after the run's
        earlier ones, with the run's job id and restarts as they were (a run without a job has
        no attempt to record: `ended` is then ignored).
        """
        with self._session() as session:
            return _change(
                session, run_id, to_state, actor, note, expect, fields, self.track, ended
            )

    def transition_many(
        self,
        changes: Sequence[tuple[int, str, RunUpdate]],
        to_state: RunState | None,
        *,
        actor: str,
        expect: Iterable[RunState] | None = None,
    ) -> list[Run]:
        """`transition` for several runs in ONE transaction (an array's claim, its job ids):
        each (run id, note, fields) is changed if `expect` holds for it, as `transition` would.
        Returns the runs that changed; a run `expect` did not hold for is left out."""
        wanted = tuple(expect) if expect is not None else None
        with self._session() as session:
            # Every run read in a few SELECTs first: `_change`'s session.get then finds each in
            # the session instead of querying, and the query's autoflush of the change before
            # (an UPDATE and an INSERT per run) no longer interleaves, so all the writes go out
            # together at the commit (profiled over the fake Slurm: a 200-run claim took 1.1 s,
            # now 0.2 s).
            loaded = _load_runs(session, [run_id for run_id, _, _ in changes])
            changed = [
                _change(session, run_id, to_state, actor, note, wanted, fields, self.track)
                for run_id, note, fields in changes
            ]
        del loaded  # held until here: the session's identity map keeps only weak references
        return [run for run in changed if run is not None]

    def events(self, run_id: int) -> list[Event]:
        self.get(run_id)
        query = select(Event).where(Event.run_id == run_id).order_by(col(Event.id))
        with self._session() as session:
            return list(session.exec(query).all())


def _load_runs(session: Session, run_ids: Sequence[int]) -> list[Run]:
    """The runs into the session, in chunks (SQLite caps a statement's variables)."""
    loaded: list[Run] = []
    for start in range(0, len(run_ids), 500):
        chunk = list(run_ids[start : start + 500])
        loaded += session.exec(select(Run).where(col(Run.id).in_(chunk))).all()
    return loaded


def _change(
    session: Session,
    run_id: int,
    to_state: RunState | None,
    actor: str,
    note: str,
    expect: Iterable[RunState] | None,
    fields: RunUpdate,
    track: bool,
    ended: AttemptEnd | None = None,
) -> Run | None:
    """One run's checked change, with its event, its ended attempt and its outbox rows, inside
    the caller's session."""
    now = time.time()
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run {run_id}")
    if expect is not None and run.state not in {s.value for s in expect}:
        return None
    from_state = run.state
    if to_state is not None and not may_transition(from_state, to_state):
        allowed = ", ".join(sorted(TRANSITIONS[from_state])) or "nothing: it has ended"
        raise IllegalTransition(
            f"run {run_id}: {from_state} -> {to_state} is not a legal state change "
            f"(asked by {actor}{f': {note}' if note else ''}); from {from_state} a run "
            f"may go to {allowed} (TRANSITIONS in hpcops/states.py)"
        )
    if ended is not None and run.slurm_job_id is not None:
        if "state" not in ended:
            raise StoreError(f"run {run_id}: an ended attempt needs the state it ended in")
        run.attempts_ended += 1
        session.add(
            Attempt.model_validate(
                {
                    "run_id": run_id,
                    "number": run.attempts_ended,
                    "slurm_job_id": run.slurm_job_id,
                    "restarts": run.restarts,
                    **ended,
                }
            )
        )
    apply_fields(run, fields, RunUpdate, "runs")
    if to_state is not None:
        run.state = RunState(to_state)
    run.updated_at = now
    session.add(run)
    if (to_state is not None and to_state != from_state) or note:
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
    # The attempt an operation is about: the one that ended, else the one under way (none: a
    # run that ended without ever having a job).
    last = ended is not None or run.state.is_terminal
    about = run.attempts_ended if last else run.attempts_ended + 1
    owe_tracking(session, run_id, from_state, run.state, now, track=track, attempt=about or None)
    return run
