"""Firing a schedule: a due time becomes a run of its spec (or its whole pipeline) for its
owner, recorded with the firing in one transaction (ScheduleService decides when; this module
makes the run).

A scheduled firing is claimed first, in APScheduler's thread (service.py), then completed here,
in a small pool: preparing its run may fetch the schedule's branch from a slow repository, and
that must delay no other schedule. One schedule's firings complete in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from hpcops.access import Caller, authorize, check_priority, role_of, unix_groups
from hpcops.backoff import backoff_s
from hpcops.config import Config
from hpcops.describe import clip as clip_to
from hpcops.engine import Engine
from hpcops.errors import HpcopsError, PermissionDenied
from hpcops.pipeline import pipeline_from_wire
from hpcops.spec import parse_spec
from hpcops.store import Audit, Firing, Run, Schedule, Store
from hpcops.store.schedules import PreparedPipeline

log = logging.getLogger(__name__)

_MAX_REASON_CHARS = 2000
# At most this many firings prepared at once (each may fetch its schedule's branch).
_FIRING_THREADS = 4
_REMOVED_BEFORE_IT_RAN = "the schedule was removed after this firing was claimed; no run queued"


def clip(text: str) -> str:
    """A firing's or a check's reason, bounded."""
    return clip_to(text, _MAX_REASON_CHARS)


def id_of(schedule: Schedule) -> int:
    assert schedule.id is not None  # schedules read from the store always have one
    return schedule.id


class Firer:
    """Makes the runs of schedules' firings, now (`fire`) or in its pool (`fire_later`)."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        config: Config,
        *,
        daemon_uid: int,
        clock: Callable[[], float] = time.time,
        fault: str | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.config = config
        self.daemon_uid = daemon_uid
        self.clock = clock
        self.fault = fault  # HPCOPS_FAULT, for the kill -9 tests
        self._pool: ThreadPoolExecutor | None = None
        self._locks: dict[int, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # A claim's failed attempts, by its schedule and time: two schedules due at the same
        # instant back off each on its own count.
        self._failures: dict[tuple[int, float], int] = {}

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(_FIRING_THREADS, thread_name_prefix="hpcops-firing")

    def shutdown(self) -> None:
        # A claimed firing that has not started is dropped (the next start completes the
        # claim); one in progress finishes and commits.
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def fire_later(self, claimed: Firing) -> None:
        pool = self._pool
        if pool is None:
            return  # stopping: the claim stays pending and is completed at the next start
        # A pool shutting down with the daemon refuses it: the claim is completed at next start.
        with contextlib.suppress(RuntimeError):
            pool.submit(self._fire_claimed, claimed)

    def _fire_claimed(self, claimed: Firing) -> None:
        """Complete a claimed firing: prepare its run and record both (record_firing)."""
        lock = self._lock_of(claimed.schedule_id)
        try:
            with lock:  # one schedule's firings in order, each after the one before
                schedule = self.store.get_schedule(claimed.schedule_id)
                removed = schedule.removed_at is not None
                note = claimed.reason
                if removed:  # between the claim and now: the firing is recorded, as skipped
                    note = "; ".join(filter(None, [note, _REMOVED_BEFORE_IT_RAN]))
                self.fire(
                    schedule,
                    claimed.scheduled_for,
                    kind=claimed.kind,
                    actor=claimed.actor,
                    note=note,
                    submit=not removed,
                    claim_id=claimed.id,
                )
        except Exception:  # a bug costs this firing, not the pool or the other schedules
            # The claim stays pending (the store was busy, say): try it again after a back-off
            # rather than only at the daemon's next start.
            key = (claimed.schedule_id, claimed.scheduled_for)
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = backoff_s(failures, first_s=30.0, max_s=600.0)
            log.exception(
                "schedule %s: firing failed; trying again in %.0f s", claimed.schedule_id, delay
            )
            retry = threading.Timer(delay, self.fire_later, args=(claimed,))
            retry.daemon = True
            retry.start()
        else:
            self._failures.pop((claimed.schedule_id, claimed.scheduled_for), None)

    def _lock_of(self, schedule_id: int) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(schedule_id, threading.Lock())

    def fire(
        self,
        schedule: Schedule,
        scheduled_for: float,
        *,
        kind: str,
        actor: str,
        note: str = "",
        submit: bool = True,
        data_json: str | None = None,
        claim_id: int | None = None,
    ) -> tuple[Firing, bool]:
        """One firing: a fresh run of the schedule's spec (or its pipeline, every step) for its
        owner, recorded with it in one transaction. Returns the firing and whether it is new
        (False: already recorded, or claimed by another than `claim_id`, the claim this
        completes).
        `data_json`: the data versions a check read, kept on a firing that queues no run (its
        run's own versions are kept on one that does)."""
        firing = Firing(
            id=claim_id,
            schedule_id=id_of(schedule),
            scheduled_for=scheduled_for,
            fired_at=self.clock(),
            kind=kind,
            actor=actor,
            outcome="skipped",
            reason=clip(note),
            data_json=data_json,
        )
        prepared: Run | PreparedPipeline | None = None
        if submit:
            try:
                prepared = self._prepare(schedule)
            except HpcopsError as exc:
                firing.outcome = "error"
                firing.reason = clip("; ".join(filter(None, [note, exc.message])))
            except Exception as exc:  # a bug costs this firing, not the scheduler
                log.exception("schedule %s: firing failed", schedule.id)
                firing.outcome = "error"
                firing.reason = clip(f"internal error: {exc!r} (see the daemon's log)")
        self._fault_point("firing_before_commit")
        run_note = f"queued by schedule {schedule.id} ({schedule.name})"
        if schedule.kind == "pipeline":
            recorded, new = self.store.record_pipeline_firing(
                firing,
                prepared if isinstance(prepared, tuple) else None,
                allow_overlap=schedule.allow_overlap,
                note=run_note,
            )
        else:
            recorded, new = self.store.record_firing(
                firing,
                prepared if isinstance(prepared, Run) else None,
                allow_overlap=schedule.allow_overlap,
                run_note=run_note,
            )
        self._fault_point("firing_after_commit")
        if new:
            queued = ""
            if recorded.run_id:
                queued = f" run {recorded.run_id}"
            elif recorded.pipeline_id:
                queued = f" pipeline p{recorded.pipeline_id}"
            log.info(
                "schedule %s (%s) fired for %s: %s%s%s",
                schedule.id,
                schedule.name,
                datetime.fromtimestamp(scheduled_for, UTC).isoformat(timespec="seconds"),
                recorded.outcome,
                queued,
                f" ({recorded.reason})" if recorded.reason else "",
            )
            if recorded.outcome == "submitted":
                self.engine.changed()
        return recorded, new

    def _prepare(self, schedule: Schedule) -> Run | PreparedPipeline:
        """What a firing queues: the schedule's spec or pipeline with its moving references
        resolved now, owned by the schedule's owner and checked as `hpcops submit` checks
        theirs (role, priority range, cluster limits, template); quotas apply in the queue as
        for any run."""
        owner = Caller(uid=schedule.owner_uid, name=schedule.owner)
        source = f"schedule {schedule.id} ({schedule.name})"
        # Moving references (a code branch, a data target's rev) are resolved by the engine
        # through the lab's code mirror: the run gets today's commit.
        if schedule.kind == "pipeline":
            loaded = pipeline_from_wire(json.loads(schedule.pipeline_json or "null"), source)
            self._check_owner(schedule, owner, [s.priority for s in loaded.specs.values()])
            return self.engine.prepare_pipeline(loaded, owner)
        spec = parse_spec(schedule.spec_yaml, source)
        self._check_owner(schedule, owner, [spec.priority])
        return self.engine.prepare_run(spec, source, owner)

    def _check_owner(self, schedule: Schedule, owner: Caller, priorities: list[int]) -> None:
        """The schedule's owner may still submit, at these priorities (else PermissionDenied,
        audited)."""
        access = self.config.access
        role = role_of(owner, access, daemon_uid=self.daemon_uid, groups=unix_groups(owner.name))
        try:
            authorize("submit", owner, role)
            for priority in priorities:
                check_priority(priority, role, access)
        except PermissionDenied as exc:
            self.store.audit(
                Audit(
                    at=self.clock(),
                    actor=owner.name,
                    role=role.value,
                    action="schedule_fire",
                    target=f"schedule {schedule.id}",
                    allowed=False,
                    detail=exc.message,
                )
            )
            raise PermissionDenied(f"the schedule's owner may no longer submit: {exc}") from None

    def _fault_point(self, name: str) -> None:
        if self.fault == name:
            log.warning("fault point %s: killing the daemon with SIGKILL (HPCOPS_FAULT)", name)
            os.kill(os.getpid(), signal.SIGKILL)
