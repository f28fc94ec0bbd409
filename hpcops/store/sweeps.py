"""Sweeps: one row per sweep, its points being ordinary runs that name it (Run.sweep_id).

A sweep and all its points are queued in one transaction: all of them, or none.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Unpack

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from hpcops.errors import NotFound
from hpcops.store.models import Run, Sweep, SweepUpdate, apply_fields
from hpcops.store.runs import RunTables


class SweepTables(RunTables):
    """The sweep table, and the questions about a sweep's points."""

    def add_sweep(
        self, sweep: Sweep, runs: Sequence[Run], actor: str, reason: str = "submitted"
    ) -> tuple[Sweep, list[Run]]:
        """The sweep and one run per point, in one transaction; each run gets the sweep's id."""
        added = self.add_runs([], actor, sweeps=[(sweep, runs)], reason=reason)
        return sweep, added

    def get_sweep(self, sweep_id: int) -> Sweep:
        with self._session() as session:
            sweep = session.get(Sweep, sweep_id)
        if sweep is None:
            raise NotFound(f"no sweep s{sweep_id}; `hpcops ls` lists the sweeps")
        return sweep

    def list_sweeps(self, limit: int | None = None, newest_first: bool = False) -> list[Sweep]:
        order = col(Sweep.id).desc() if newest_first else col(Sweep.id)
        query = select(Sweep).order_by(order)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return list(session.exec(query).all())

    def sweeps_by_ids(self, sweep_ids: Iterable[int]) -> dict[int, Sweep]:
        ids = sorted(set(sweep_ids))
        if not ids:
            return {}
        with self._session() as session:
            found = session.exec(select(Sweep).where(col(Sweep.id).in_(ids))).all()
        return {s.id: s for s in found if s.id is not None}

    def sweep_runs(self, sweep_id: int) -> list[Run]:
        """Every run of the sweep, by point, the latest run of a point last."""
        query = (
            select(Run).where(Run.sweep_id == sweep_id).order_by(col(Run.sweep_index), col(Run.id))
        )
        with self._session() as session:
            return list(session.exec(query).all())

    def sweep_counts(self, sweep_ids: Iterable[int]) -> dict[int, dict[str, int]]:
        """Per sweep, how many points are in each state, counting each point's latest run (a
        point rerun counts once, as its rerun)."""
        ids = sorted(set(sweep_ids))
        counts: dict[int, dict[str, int]] = {i: {} for i in ids}
        if not ids:
            return counts
        latest = (
            sa_select(func.max(col(Run.id)))
            .where(col(Run.sweep_id).in_(ids))
            .group_by(col(Run.sweep_id), col(Run.sweep_index))
        )
        query = (
            sa_select(col(Run.sweep_id), col(Run.state), func.count())
            .where(col(Run.id).in_(latest))
            .group_by(col(Run.sweep_id), col(Run.state))
        )
        with self._session() as session:
            for sweep_id, state, n in session.connection().execute(query).all():
                counts[int(sweep_id or 0)][str(state)] = int(n)
        return counts

    def update_sweep(self, sweep_id: int, **fields: Unpack[SweepUpdate]) -> Sweep:
        with self._session() as session:
            sweep = session.get(Sweep, sweep_id)
            if sweep is None:
                raise NotFound(f"no sweep s{sweep_id}")
            apply_fields(sweep, fields, SweepUpdate, "sweeps")
            sweep.updated_at = time.time()
            session.add(sweep)
            return sweep
