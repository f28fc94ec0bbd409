"""Firings are claimed in APScheduler's thread and prepared in a pool: a schedule whose branch
fetch hangs delays no other schedule (issue 12, item 13), and a claim left by a crash is
completed at the next start. A real store and a real ScheduleService over an engine stand-in
whose prepare_run blocks for one schedule."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hpcops.access import Caller
from hpcops.config import parse_config
from hpcops.errors import StoreError
from hpcops.scheduling.service import ScheduleService, _job_id
from hpcops.spec import Spec, parse_spec
from hpcops.states import RunState
from hpcops.store import Firing, Run, Schedule, Store

SPEC = "name: nightly\nexperiment: e\ncommand: 'true'\n"


class SlowForOne:
    """The engine as the schedules see it; preparing `slow`'s run waits until released."""

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.release = threading.Event()
        self.prepared: list[str] = []

    def prepare_run(self, spec: Spec, source: str, caller: Caller) -> Run:
        if self.slow in source:
            self.release.wait(30)  # a fetch of an unreachable URL, as far as firings can tell
        self.prepared.append(source)
        now = time.time()
        return Run(
            name=spec.name,
            experiment=spec.experiment,
            owner=caller.name,
            owner_uid=caller.uid,
            priority=0,
            state=RunState.QUEUED,
            spec_yaml=SPEC,
            spec_hash="h",
            created_at=now,
            updated_at=now,
        )

    def check_spec(self, spec: Spec, source: str) -> None:
        return None

    def current_data(self, spec: Spec, source: str, caller: Caller) -> list[Any]:
        return []

    def changed(self) -> None:
        return None


def _schedule(
    store: Store, name: str, catch_up: str = "one", cron: str | None = None, zone: str = "UTC"
) -> Schedule:
    now = time.time()
    return store.add_schedule(
        Schedule(
            name=name,
            owner="root",
            owner_uid=0,
            spec_yaml=SPEC,
            spec_name="nightly",
            every_s=None if cron else 3600,
            cron=cron,
            timezone=zone,
            catch_up=catch_up,
            catch_up_grace_s=3600,
            created_at=now,
            updated_at=now,
        )
    )


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.02)


def _claim(store: Store, schedule: Schedule, due: float) -> Firing:
    """What a daemon killed between a claim's commit and its run's leaves: a pending firing."""
    firing = Firing(
        schedule_id=schedule.id or 0,
        scheduled_for=due,
        fired_at=due,
        kind="scheduled",
        actor="daemon",
        outcome="pending",
    )
    claimed, new = store.claim_firing(firing)
    assert new
    return claimed


def _service(store: Store, engine: SlowForOne, clock: Any = time.time) -> ScheduleService:
    config = parse_config("lab: t\n", "config.yaml")
    return ScheduleService(store, engine, config, daemon_uid=0, clock=clock)  # type: ignore[arg-type]


@contextlib.contextmanager
def _firing(service: ScheduleService) -> Iterator[ScheduleService]:
    """The service started (if it is not yet) and firing, as after the daemon's first tick;
    shut down after."""
    if service._scheduler is None:
        service.start()
    ready, stop = threading.Event(), threading.Event()
    ready.set()
    try:
        service.resume_after(ready, stop)
        yield service
    finally:
        service.shutdown()


@pytest.fixture
def lab(tmp_path: Path) -> tuple[Store, SlowForOne, ScheduleService]:
    parse_spec(SPEC, "check")  # the spec itself is fine
    store = Store(tmp_path / "hpcops.db")
    engine = SlowForOne(slow="(slow)")
    service = _service(store, engine)
    service.start()
    yield store, engine, service
    engine.release.set()
    service.shutdown()


def test_a_slow_firing_delays_no_other_schedule(
    lab: tuple[Store, SlowForOne, ScheduleService],
) -> None:
    store, engine, service = lab
    slow, quick = _schedule(store, "slow"), _schedule(store, "quick")
    due = [datetime.fromtimestamp(time.time(), UTC)]
    service._on_due(slow.id or 0, due)  # APScheduler's thread: returns once claimed
    service._on_due(quick.id or 0, due)
    # Its run is prepared, then recorded with its firing: wait for the record.
    _wait(lambda: store.firings(quick.id or 0)[0][0].outcome != "pending", "the quick one fired")
    [quick_firing] = store.firings(quick.id or 0)[:1]
    assert quick_firing[0].outcome == "submitted" and quick_firing[1] is not None
    [slow_firing] = store.firings(slow.id or 0)[:1]
    assert slow_firing[0].outcome == "pending"  # claimed: a crash now loses nothing
    engine.release.set()
    _wait(lambda: store.firings(slow.id or 0)[0][0].outcome == "submitted", "slow completed")


def test_a_claim_left_by_a_crash_is_completed_at_start_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "hpcops.db")
    schedule = _schedule(store, "crashed")
    claimed, new = store.claim_firing(
        Firing(
            schedule_id=schedule.id or 0,
            scheduled_for=1795400000.0,
            fired_at=1795400000.0,
            kind="scheduled",
            actor="daemon",
            outcome="pending",
        )
    )
    assert new and store.pending_firings()[0].id == claimed.id
    again, new_again = store.claim_firing(
        Firing(
            schedule_id=schedule.id or 0,
            scheduled_for=1795400000.0,
            fired_at=1.0,
            kind="scheduled",
            actor="daemon",
            outcome="pending",
        )
    )
    assert not new_again and again.id == claimed.id

    engine = SlowForOne(slow="nothing is slow")
    with _firing(_service(store, engine)):
        _wait(lambda: not store.pending_firings(), "the claim was completed")
    firings = store.firings(schedule.id or 0)
    assert [(f.outcome, f.id) for f, _ in firings] == [("submitted", claimed.id)]
    assert len(engine.prepared) == 1


def test_a_skip_planned_after_a_restart_leaves_the_claim_to_complete(tmp_path: Path) -> None:
    """Killed after a claim committed and before APScheduler moved the job on: at the next start
    APScheduler reports that time again, and `catch_up: none` plans a skip for it. The skip must
    not overwrite the claim, whose run is being prepared: the claim completes, once."""
    store = Store(tmp_path / "hpcops.db")
    schedule = _schedule(store, "crashed", catch_up="none")
    due = float(int(time.time()) - 300)  # the daemon was down for five minutes
    claimed = _claim(store, schedule, due)
    engine = SlowForOne(slow="crashed")  # its preparation waits: the skip comes first
    with _firing(_service(store, engine)) as service:  # the claim goes to the pool
        try:
            service._on_due(schedule.id or 0, [datetime.fromtimestamp(due, UTC)])  # the skip
            [(firing, _)] = store.firings(schedule.id or 0)
            assert (firing.id, firing.outcome) == (claimed.id, "pending")
        finally:
            engine.release.set()
        _wait(lambda: not store.pending_firings(), "the claim was completed")
    [(firing, run)] = store.firings(schedule.id or 0)
    assert (firing.id, firing.outcome, firing.kind) == (claimed.id, "submitted", "scheduled")
    assert run is not None and len(engine.prepared) == 1


def test_the_repeated_hour_as_the_clocks_go_back_does_not_fire_again(
    lab: tuple[Store, SlowForOne, ScheduleService],
) -> None:
    store, _, service = lab
    nightly = _schedule(store, "berlin", cron="30 2 * * *", zone="Europe/Berlin")
    first, again = 1761438600.0, 1761442200.0  # 02:30 +02:00, then 02:30 +01:00 (2025-10-26)
    service._on_due(nightly.id or 0, [datetime.fromtimestamp(first, UTC)])
    _wait(lambda: not store.pending_firings(), "the first 02:30 fired")
    service._on_due(nightly.id or 0, [datetime.fromtimestamp(again, UTC)])
    assert [f.scheduled_for for f, _ in store.firings(nightly.id or 0)] == [first]


def test_a_resume_during_a_pause_leaves_the_job_as_the_row_says(
    lab: tuple[Store, SlowForOne, ScheduleService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two leads, one pausing and one resuming a schedule at the same moment. The pause has
    written its row and not yet paused the job when the resume comes: the resume waits for it,
    so the job ends as the row says (active and running), not paused under an active row."""
    store, _, service = lab
    schedule = _schedule(store, "contested")
    paused_row_written = threading.Event()
    real_update = store.update_schedule

    def update_then_linger(schedule_id: int, **fields: Any) -> Schedule:
        updated = real_update(schedule_id, **fields)
        if fields.get("paused") is True:
            paused_row_written.set()
            time.sleep(0.3)  # the pause's request thread, descheduled before its job change
        return updated

    monkeypatch.setattr(store, "update_schedule", update_then_linger)
    pause = threading.Thread(target=service.set_paused, args=(schedule, True))
    pause.start()
    assert paused_row_written.wait(5)
    service.set_paused(schedule, False)
    pause.join()
    row = store.get_schedule(schedule.id or 0)
    assert service._scheduler is not None
    job = service._scheduler.get_job(_job_id(schedule.id))
    assert row.paused is False
    assert job is not None and job.next_run_time is not None, "the job runs, as its row says"


def test_a_due_time_the_store_could_not_take_is_recorded_later(
    lab: tuple[Store, SlowForOne, ScheduleService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """APScheduler moves a job on whatever its executor did: a claim the store refused (busy
    past its timeout) is tried again after a back-off, not lost."""
    store, engine, service = lab
    schedule = _schedule(store, "busy-store")
    real_claim = store.claim_firing
    refusals = [StoreError("database is locked (for the test)")]

    def claim_once_refused(firing: Firing) -> tuple[Firing, bool]:
        if refusals:
            raise refusals.pop()
        return real_claim(firing)

    monkeypatch.setattr(store, "claim_firing", claim_once_refused)
    monkeypatch.setattr("hpcops.scheduling.service._DUE_RETRY_S", 0.05)
    due = float(int(time.time()))
    service._on_due(schedule.id or 0, [datetime.fromtimestamp(due, UTC)])  # returns quietly
    assert refusals == [], "the first claim was refused"
    _wait(lambda: engine.prepared, "the retry claimed and fired it")
    _wait(lambda: not store.pending_firings(), "the firing completed")
    [(firing, run)] = store.firings(schedule.id or 0)
    assert (firing.scheduled_for, firing.outcome, firing.kind) == (due, "submitted", "scheduled")
    assert run is not None


def test_due_times_held_back_by_a_slow_first_tick_are_not_a_catch_up(tmp_path: Path) -> None:
    """A schedule added just after the daemon started: its first tick (start-up reconciliation,
    slowed by a loaded node) held firing back for 10 s, so three due times arrive at once. The
    daemon was running all along: one ordinary firing, not a catch-up that says it was down
    (what CI saw: a false catch-up taken for the real one after a restart)."""
    store = Store(tmp_path / "hpcops.db")
    started = float(int(time.time()))
    clock = [started]
    service = _service(store, SlowForOne(slow="nothing is slow"), clock=lambda: clock[0])
    service.start()
    schedule = _schedule(store, "added-while-starting")
    clock[0] = started + 10  # the first tick has run: firing resumes
    with _firing(service):
        held_back = [datetime.fromtimestamp(started + s, UTC) for s in (1, 3, 5)]
        service._on_due(schedule.id or 0, held_back)
        _wait(lambda: not store.pending_firings(), "the firing completed")
        # Times due before the daemon started are missed ones, however recent.
        before = [datetime.fromtimestamp(started - s, UTC) for s in (3, 1)]
        service._on_due(schedule.id or 0, before)
        _wait(lambda: not store.pending_firings(), "the catch-up completed")
    by_time = {f.scheduled_for: f for f, _ in store.firings(schedule.id or 0)}
    assert sorted(by_time) == [started - 1, started + 5]
    fired = by_time[started + 5]
    assert (fired.kind, fired.outcome) == ("scheduled", "submitted")
    assert "2 earlier due time(s)" in fired.reason and "starting up or busy" in fired.reason
    # (Skipped for overlap: the first firing's run is still queued.)
    assert by_time[started - 1].kind == "catch-up"


def test_a_claim_whose_schedule_was_removed_says_so(tmp_path: Path) -> None:
    """Killed with a claim pending; the schedule was removed before the next start (from the
    database of a stopped daemon, or in the instant between claim and completion). The claim
    completes as skipped, and its reason says why, not an empty line."""
    store = Store(tmp_path / "hpcops.db")
    schedule = _schedule(store, "gone")
    due = float(int(time.time()) - 60)
    claimed = _claim(store, schedule, due)
    store.update_schedule(schedule.id or 0, removed_at=time.time(), removed_by="lead")
    engine = SlowForOne(slow="nothing is slow")
    with _firing(_service(store, engine)):
        _wait(lambda: not store.pending_firings(), "the claim was completed")
    [(firing, run)] = store.firings(schedule.id or 0)
    assert (firing.id, firing.outcome, run) == (claimed.id, "skipped", None)
    assert "removed" in firing.reason
    assert engine.prepared == []


def test_claims_of_two_schedules_due_at_once_back_off_each_on_its_own_count(
    lab: tuple[Store, SlowForOne, ScheduleService], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, service = lab
    first, second = _schedule(store, "first"), _schedule(store, "second")
    monkeypatch.setattr(store, "get_schedule", _refuse)  # every completion fails
    delays: list[float] = []
    monkeypatch.setattr("hpcops.scheduling.firing.threading.Timer", _NoTimer.recording(delays))
    due = float(int(time.time()))
    for schedule in (first, second):
        service._firer._fire_claimed(_claim(store, schedule, due))
    # Each claim's first failure waits the first back-off: the second schedule's is not
    # counted as the first one's second failure.
    assert len(delays) == 2 and delays[0] == delays[1], delays


def _refuse(schedule_id: int) -> Schedule:
    raise StoreError("database is locked (for the test)")


class _NoTimer:
    """threading.Timer that records its delay and never runs."""

    def __init__(self, delays: list[float], delay: float) -> None:
        delays.append(delay)
        self.daemon = False

    @classmethod
    def recording(cls, delays: list[float]) -> Any:
        return lambda delay, *args, **kwargs: cls(delays, delay)

    def start(self) -> None:
        return None
