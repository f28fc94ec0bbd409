"""The daemon's schedules: APScheduler says when, this module turns each firing into a run (or
a whole pipeline: a schedule added with a pipeline file).

APScheduler 3.x runs in its own thread (BackgroundScheduler) with its jobs in the daemon's
database (SQLAlchemyJobStore, table `apscheduler_jobs`), so schedules survive restarts and
neither the loop's tick nor the API waits for a firing. Our tables (Schedule, Firing) say what
exists and what happened; at start-up APScheduler's jobs are made to agree with them.

Two APScheduler behaviours are replaced, because a firing needs its scheduled time and the
catch-up decision needs every missed time:
  - the job function gets no scheduled time in 3.x, so due jobs go to FiringExecutor, which
    hands the times to `ScheduleService._on_due` (the stored job target, `due`, is never called);
  - coalescing and misfire handling are off; cadence.plan_firings decides, and says why.

On-data-change schedules (datachange.py) have an interval job too, but its due times start a
check, not a firing: in a small thread pool of their own, so that a slow or unreachable
repository holds up neither the other schedules' firings nor the loop or the API. A check
decides from the store (the versions of its last firing's run), never from memory, so a kill -9
mid-check loses nothing: the next check, after the restart, decides the same.

Crash safety (kill -9 at any instant). FiringExecutor *claims* a firing in the scheduler's
thread (its record, outcome "pending", one small commit) before APScheduler moves the job's next
run time on in its store; preparing the run (a fetch of the schedule's branch, its data
versions: possibly slow) happens in a pool, so one unreachable repository delays no other
schedule. The run and the completed record are written in one transaction, at most once per
(schedule, scheduled time):
  - killed before the claim: the store still holds the old time, which comes due again at
    start-up (a catch-up, within the grace), so the run is not lost;
  - killed after the claim, before its completion: the claim is found pending at start-up and
    completed then;
  - killed after the completion: Store.record_firing finds the record, so nothing is queued
    twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from apscheduler.executors.base import BaseExecutor

from hpcops import cadence
from hpcops.access import Caller
from hpcops.backoff import backoff_s
from hpcops.config import Config
from hpcops.engine import DAEMON, Engine
from hpcops.errors import HpcopsError, InvalidInput, SpecError
from hpcops.pipeline import Pipeline as LoadedPipeline
from hpcops.pipeline import pipeline_from_wire, pipeline_to_wire
from hpcops.scheduling import datachange
from hpcops.scheduling.firing import Firer, clip, id_of
from hpcops.scheduling.settings import ScheduleOptions, schedule_settings
from hpcops.spec import Spec, parse_spec, spec_to_yaml
from hpcops.store import Firing, Schedule, Store
from hpcops.store.schedules import FIRING_PENDING
from hpcops.yamlio import dump_yaml

if TYPE_CHECKING:
    from apscheduler.job import Job
    from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

# Due times that could not be recorded are tried again this much later, doubling up to the max.
_DUE_RETRY_S = 5.0
_DUE_RETRY_MAX_S = 300.0

_JOB_PREFIX = "schedule-"


def due(schedule_id: int) -> None:
    """The job target APScheduler stores for each schedule (it needs an importable function).
    FiringExecutor never calls it: it passes the scheduled times to the daemon's
    ScheduleService, which the function would have no way to learn."""
    raise RuntimeError(
        f"schedule {schedule_id}: hpcops' scheduled jobs run only through FiringExecutor"
    )


class FiringExecutor(BaseExecutor):  # type: ignore[misc]  # APScheduler has no type hints
    """Runs a due job in the scheduler's own thread, with its scheduled times. Inline, like
    APScheduler's DebugExecutor, so that the firing is committed before APScheduler records
    the job's next run time (see the module docstring)."""

    def __init__(self, on_due: Callable[[int, list[datetime]], None]) -> None:
        super().__init__()
        self._on_due = on_due

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        try:
            self._on_due(int(job.args[0]), list(run_times))
        except BaseException:
            self._run_job_error(job.id, *sys.exc_info()[1:])
        else:
            self._run_job_success(job.id, [])


# At most this many on-data-change checks at once (each is a git fetch and a few reads).
_CHECK_THREADS = 2


def _job_id(schedule_id: int | None) -> str:
    return f"{_JOB_PREFIX}{schedule_id}"


class ScheduleService:
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
        self._scheduler: BackgroundScheduler | None = None
        self._checks: ThreadPoolExecutor | None = None
        self._firer = Firer(store, engine, config, daemon_uid=daemon_uid, clock=clock, fault=fault)
        # Schedules with a check in progress: a check that outlasts its interval is not
        # started again beside itself.
        self._checking: set[int] = set()
        self._checking_lock = threading.Lock()
        # A schedule's row and APScheduler's job change together: a pause and a resume at once
        # from two requests would otherwise leave a row that says active over a paused job.
        self._rows_lock = threading.Lock()
        # When this daemon started: a due time from then on was due while it ran (starting up,
        # or busy), so a late one is not a missed one (cadence.plan_firings). Not when firing
        # resumed: a first tick slowed by a loaded node holds back times that were due while
        # the daemon was running, and calling them missed would fire a false catch-up.
        self._up_since: float | None = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        self._up_since = self.clock()
        scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.store.engine)},
            executors={"default": FiringExecutor(self._on_due)},
            # Every due time reaches _on_due: plan_firings coalesces and judges lateness.
            job_defaults={"coalesce": False, "misfire_grace_time": None, "max_instances": 1},
            timezone=UTC,
        )
        # Paused while APScheduler's jobs are made to agree with our table (docs/notes-stack.md:
        # stored jobs are visible only once started), and until resume_after says the runs are
        # known.
        scheduler.start(paused=True)
        self._scheduler = scheduler
        self._checks = ThreadPoolExecutor(_CHECK_THREADS, thread_name_prefix="hpcops-data-check")
        self._firer.start()
        for schedule in self.store.schedules():
            self._sync_job(schedule)
        known = {_job_id(s.id) for s in self.store.schedules()}
        for job in scheduler.get_jobs():
            if job.id not in known:
                # Its schedule was removed, or never committed, before a crash.
                scheduler.remove_job(job.id)
        log.info("schedules: %d, firing once the loop's first tick has run", len(known))

    def resume_after(self, ready: threading.Event, stop: threading.Event) -> None:
        """Let schedules fire once `ready` is set (the loop's first tick: start-up
        reconciliation). Until then a catch-up firing would see runs that ended while the
        daemon was down as still running, and skip itself for overlap."""
        while not ready.wait(0.5):
            if stop.is_set():
                return
        scheduler = self._scheduler  # shutdown() may drop it meanwhile, on its own thread
        if scheduler is not None and not stop.is_set():
            # Firings a stopped daemon claimed but did not complete: complete them now.
            for claimed in self.store.pending_firings():
                self._firer.fire_later(claimed)
            from apscheduler.schedulers import SchedulerNotRunningError

            # Stopping between the check and here leaves nothing to resume: the claims stay
            # pending for the next start.
            with contextlib.suppress(SchedulerNotRunningError):
                scheduler.resume()

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)  # lets a firing in progress commit
            self._scheduler = None
        if self._checks is not None:
            # A check that has not started is dropped (the next start checks again); one in
            # progress finishes, so a firing it is making commits.
            self._checks.shutdown(wait=True, cancel_futures=True)
            self._checks = None
        self._firer.shutdown()

    def _sync_job(self, schedule: Schedule) -> None:
        """Make APScheduler's job agree with the schedule's row: present and running, paused,
        or gone. A schedule whose trigger cannot be built is reported, the others go on."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        job_id = _job_id(schedule.id)
        job = scheduler.get_job(job_id)
        if schedule.removed_at is not None:
            if job is not None:
                scheduler.remove_job(job_id)
            return
        if job is None:
            try:
                trigger = _trigger(schedule)
            except (ValueError, LookupError) as exc:
                log.error("schedule %s: cannot build its trigger: %s", schedule.id, exc)
                self.store.update_schedule(id_of(schedule), last_error=f"cannot schedule it: {exc}")
                return
            extra: dict[str, Any] = {"next_run_time": None} if schedule.paused else {}
            scheduler.add_job(
                due, trigger=trigger, args=[schedule.id], id=job_id, name=schedule.name, **extra
            )
            return
        if schedule.paused and job.next_run_time is not None:
            scheduler.pause_job(job_id)
        elif not schedule.paused and job.next_run_time is None:
            scheduler.resume_job(job_id)  # the next time from now: a pause is not caught up

    # --- requests ---------------------------------------------------------------------------

    def add(self, spec: Spec, source: str, options: ScheduleOptions, caller: Caller) -> Schedule:
        """A new schedule of `spec`, owned by the caller; every value is checked first, and a
        bad one changes nothing (InvalidInput naming the option)."""
        settings = schedule_settings(
            self.config.schedules,
            options,
            spec.schedule,
            spec.name,
            source,
            watch=lambda: datachange.watch_problem(spec),
        )
        # The spec must be one that `hpcops submit` would queue today.
        plain = spec.model_copy(update={"schedule": None})
        self.engine.check_spec(plain, source)
        if settings["on_data_change"]:
            # The branch and the .dvc files must be readable now: a typo in a path is told to
            # the one adding the schedule, not found by every check. The first check fires.
            self.engine.current_data(plain, source, caller)
        return self._store(
            settings, caller, spec_yaml=spec_to_yaml(plain), spec_name=spec.name, kind="spec"
        )

    def add_pipeline(
        self, loaded: LoadedPipeline, options: ScheduleOptions, caller: Caller
    ) -> Schedule:
        """A new schedule of a pipeline: each firing queues the whole pipeline. Checked now as a
        firing would queue it (each step's code resolved and its spec checked against the
        cluster), nothing stored; the pipeline is kept unpinned, so each firing takes the
        newest commit of a step's branch."""
        settings = schedule_settings(
            self.config.schedules, options, None, loaded.name, loaded.source, watch=None
        )
        self.engine.prepare_pipeline(loaded, caller)  # raises what `submit` would refuse
        return self._store(
            settings,
            caller,
            spec_yaml=dump_yaml(loaded.definition.model_dump(mode="json", by_alias=True)),
            spec_name=loaded.name,
            kind="pipeline",
            pipeline_json=json.dumps(pipeline_to_wire(loaded)),  # keeps the steps in order
        )

    def _store(self, settings: dict[str, Any], caller: Caller, **what: Any) -> Schedule:
        now = self.clock()
        schedule = self.store.add_schedule(
            Schedule(
                **settings,
                **what,
                owner=caller.name,
                owner_uid=caller.uid,
                created_at=now,
                updated_at=now,
            )
        )
        self._sync_job(schedule)
        return schedule

    def set_paused(self, schedule: Schedule, paused: bool) -> Schedule:
        with self._rows_lock:
            updated = self.store.update_schedule(id_of(schedule), paused=paused)
            self._sync_job(updated)
        return updated

    def remove(self, schedule: Schedule, caller: Caller) -> Schedule:
        with self._rows_lock:
            updated = self.store.update_schedule(
                id_of(schedule), removed_at=self.clock(), removed_by=caller.name
            )
            self._sync_job(updated)
        return updated

    def run_now(self, schedule: Schedule, caller: Caller) -> Firing:
        firing, _ = self._firer.fire(
            schedule,
            round(self.clock(), 3),
            kind="run-now",
            actor=caller.name,
            note=f"run now, asked by {caller.name}",
        )
        return firing

    def next_fire_times(self, schedules: list[Schedule]) -> dict[int, float | None]:
        """When each fires next, from its trigger: no APScheduler lock, so `schedule ls`
        answers while a firing is in progress."""
        now = datetime.now(UTC)
        times: dict[int, float | None] = {}
        for s in schedules:
            if s.paused or s.removed_at is not None or s.id is None:
                times[id_of(s)] = None
                continue
            try:
                nxt = _trigger(s).get_next_fire_time(None, now)
            except (ValueError, LookupError):
                nxt = None
            times[s.id] = nxt.timestamp() if nxt is not None else None
        return times

    def problem(self, schedule: Schedule) -> str | None:
        """Why the schedule's spec, or a step's spec of its pipeline, would not be queued now
        (the cluster, the templates or the spec rules changed since it was added), or None.
        Nothing is fetched: `schedule ls` asks this of every schedule."""
        source = f"schedule {schedule.id} ({schedule.name})"
        try:
            if schedule.kind == "pipeline":
                loaded = pipeline_from_wire(json.loads(schedule.pipeline_json or "null"), source)
                for step, spec in loaded.specs.items():
                    self.engine.check_spec(spec, f"{source}, step {step}")
            else:
                self.engine.check_spec(parse_spec(schedule.spec_yaml, source), source)
        except InvalidInput as exc:
            return exc.message
        return None

    # --- firing -----------------------------------------------------------------------------

    def _on_due(self, schedule_id: int, run_times: list[datetime], attempt: int = 0) -> None:
        """APScheduler says these times of this schedule are due (FiringExecutor). APScheduler
        moves the job on whatever happens here, so times that could not be recorded (the store
        busy past its timeout, say) are tried again later, backing off, rather than lost: the
        claims are idempotent, and a retry decides with the clock of its own time."""
        try:
            self._plan_due(schedule_id, run_times)
        except Exception:
            attempt += 1
            delay = backoff_s(attempt, first_s=_DUE_RETRY_S, max_s=_DUE_RETRY_MAX_S)
            log.exception(
                "schedule %s: could not record its due time(s); trying again in %.0f s",
                schedule_id,
                delay,
            )
            retry = threading.Timer(delay, self._on_due, args=(schedule_id, run_times, attempt))
            retry.daemon = True
            retry.start()

    def _plan_due(self, schedule_id: int, run_times: list[datetime]) -> None:
        now = self.clock()
        schedule = self.store.get_schedule(schedule_id)
        if schedule.removed_at is not None or schedule.paused:
            return  # changed while the job was due; _sync_job has dealt with the job
        if schedule.on_data_change:
            # Checks missed while the daemon was down are one check now: the data is what it
            # is now, whatever it was in between.
            self._start_check(schedule_id, max(t.timestamp() for t in run_times))
            return
        due = [
            round(t.timestamp(), 3)
            for t in run_times
            if not cadence.repeated_wall_time(t.timestamp(), schedule.cron, schedule.timezone)
        ]
        if not due:
            return  # 02:30 come round again as the clocks went back: it fired the first time
        plans = cadence.plan_firings(
            due,
            now,
            catch_up=schedule.catch_up,
            grace_s=schedule.catch_up_grace_s,
            up_since=self._up_since,
        )
        for plan in plans:
            if not plan.fire:  # a skip is a record only: nothing slow to wait for
                self._firer.fire(
                    schedule,
                    plan.scheduled_for,
                    kind=plan.kind,
                    actor=DAEMON,
                    note=plan.reason,
                    submit=False,
                )
                continue
            # The claim is committed here, in APScheduler's thread, before it moves the job's
            # next run time on; preparing the run (a fetch of the schedule's branch, its data
            # versions) happens in a pool, so one slow repository delays no other schedule.
            claimed, new = self.store.claim_firing(
                Firing(
                    schedule_id=schedule_id,
                    scheduled_for=plan.scheduled_for,
                    fired_at=now,
                    kind=plan.kind,
                    actor=DAEMON,
                    outcome=FIRING_PENDING,
                    reason=clip(plan.reason),
                )
            )
            if new:
                self._firer.fire_later(claimed)

    def _start_check(self, schedule_id: int, due_at: float) -> None:
        pool = self._checks
        if pool is None:
            return
        with self._checking_lock:
            if schedule_id in self._checking:
                log.info("schedule %s: its previous data check is still running", schedule_id)
                return
            self._checking.add(schedule_id)
        try:
            pool.submit(self._check_in_pool, schedule_id, due_at)
        except RuntimeError:  # the pool is shutting down with the daemon
            with self._checking_lock:
                self._checking.discard(schedule_id)

    def _check_in_pool(self, schedule_id: int, due_at: float) -> None:
        try:
            self.check_data(schedule_id, due_at)
        except Exception:  # a bug costs this check, not the pool or the other schedules
            log.exception("schedule %s: data check failed", schedule_id)
        finally:
            with self._checking_lock:
                self._checking.discard(schedule_id)

    def check_data(self, schedule_id: int, due_at: float) -> Firing | None:
        """One check of an on-data-change schedule: read the data versions now (queueing
        nothing), decide (datachange.decide), record the result on the schedule, and fire if
        the data changed. Returns the firing, if there was one."""
        schedule = self.store.get_schedule(schedule_id)
        if schedule.removed_at is not None or schedule.paused or not schedule.on_data_change:
            return None
        source = f"schedule {schedule_id} ({schedule.name})"
        owner = Caller(uid=schedule.owner_uid, name=schedule.owner)
        try:
            spec = parse_spec(schedule.spec_yaml, source)
            current = self.engine.current_data(spec, source, owner)
        except Exception as exc:
            if isinstance(exc, SpecError):  # the field and why, without the "invalid spec" line
                message = "; ".join(str(p) for p in exc.problems)
            elif isinstance(exc, HpcopsError):
                message = exc.message
            else:
                message = f"internal error: {exc!r}"
            if not isinstance(exc, HpcopsError):
                log.exception("schedule %s: data check failed", schedule_id)
            else:
                log.warning("schedule %s: data check failed: %s", schedule_id, message)
            self.store.record_check(
                schedule_id, at=self.clock(), ok=False, result=clip(f"failed: {message}")
            )
            return None
        fired, failed = self.store.data_baseline(schedule_id)
        active = self.store.active_scheduled_run(schedule_id)
        decision = datachange.decide(
            tuple(datachange.TargetVersion(v.path, v.md5) for v in current),
            fired=datachange.versions_from_data_json(fired),
            failed=datachange.versions_from_data_json(failed),
            active_run=active[0] if active else None,
            active_state=active[1] if active else None,
            allow_overlap=schedule.allow_overlap,
        )
        self.store.record_check(schedule_id, at=self.clock(), ok=True, result=clip(decision.result))
        if not decision.fire:
            log.debug("schedule %s: %s", schedule_id, decision.result)
            return None
        firing, _ = self._firer.fire(
            schedule,
            round(due_at, 3),
            kind="data-change",
            actor=DAEMON,
            note=decision.result,
            data_json=json.dumps([v.to_json() for v in current]),
        )
        return firing


def _trigger(schedule: Schedule) -> Any:
    """The APScheduler trigger of a schedule; an on-data-change schedule's is the interval of
    its checks."""
    return cadence.build_trigger(
        cron=schedule.cron,
        every_s=schedule.check_every_s if schedule.on_data_change else schedule.every_s,
        timezone=schedule.timezone,
        anchor=schedule.created_at,
    )
