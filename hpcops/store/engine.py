"""The SQLite file under the store: WAL, BEGIN IMMEDIATE, sessions, and the additive migration.

Only the daemon opens it (docs/design.md, decision 1). Every transaction starts with BEGIN
IMMEDIATE: a read-then-write in a deferred transaction fails at once with "database is locked"
when another connection writes (921 of 2000 in a test: docs/notes-stack.md), while IMMEDIATE
waits its turn under the busy timeout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel, create_engine

from hpcops.errors import StoreError

# Importing the tables registers them in SQLModel.metadata, which create_all and the migration read.
from hpcops.store import models as _models  # noqa: F401

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


class Database:
    """The open database file; each table group of the store (runs, schedules, tracking, audit)
    builds on it and writes through `_session`, one transaction per call."""

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
        """One transaction (BEGIN IMMEDIATE); SQLAlchemy's errors come out as StoreError.

        The daemon's threads (API requests, the loop, the tracker) take their turns on a lock
        of this process first: every transaction is IMMEDIATE, so they are one at a time
        anyway, and a thread that waits on SQLite's own lock polls it with sleeps of up to
        100 ms (its busy handler), where a thread waiting here is woken at once. Measured in
        a burst of 1,000 submits from 4 users (issue 16): most of a submit's time was that
        sleep. Re-entrant, so a nested transaction behaves as before (SQLite refuses it)."""
        with _file_lock(self.path):
            try:
                with Session(self._engine, expire_on_commit=False) as session, session.begin():
                    yield session
            except SQLAlchemyError as exc:
                raise StoreError(f"database {self.path}: {exc}") from exc


_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.RLock:
    """One lock per database file in this process, whichever Database object opened it."""
    key = os.path.realpath(path)
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(key, threading.RLock())
