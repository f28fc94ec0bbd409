"""Schedules without a daemon: cron by crontab's rules, the catch-up and overlap decisions, the
spec's schedule block, and the store's one-transaction, once-only firing record."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hpcops import cadence as timing
from hpcops.errors import InvalidInput, SpecError
from hpcops.spec import parse_spec, spec_to_yaml
from hpcops.states import RunState
from hpcops.store import Firing, Run, Schedule, Store

# --- cron --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "day_of_week"),
    [
        ("0 3 * * 1", "mon"),  # crontab: 1 is Monday (APScheduler 3.x would read Tuesday)
        ("0 3 * * 0", "sun"),
        ("0 3 * * 7", "sun"),
        ("0 3 * * 1-5", "mon,tue,wed,thu,fri"),
        ("0 3 * * MON-fri", "mon,tue,wed,thu,fri"),
        ("0 3 * * 5-7", "sun,fri,sat"),
        ("0 3 * * */2", "sun,tue,thu,sat"),
        ("0 3 * * *", "*"),
    ],
)
def test_days_of_week_mean_what_crontab_means(expr: str, day_of_week: str) -> None:
    assert timing.parse_cron(expr).day_of_week == day_of_week


def test_other_fields_become_explicit_values() -> None:
    fields = timing.parse_cron("*/15 9-17/4 1,15 jan-mar *")
    assert fields == timing.CronFields("0,15,30,45", "9,13,17", "1,15", "1,2,3", "*")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 3 * *", "has 5 fields .* got 4"),
        ("0 0 3 * * 1", "no seconds field: .* every_s"),
        ("@daily", "macros such as @daily are not supported"),
        ("60 3 * * *", "minute field '60': 60 is outside 0-59"),
        ("0 24 * * *", "hour field '24': 24 is outside 0-23"),
        ("0 3 0 * *", "day of month field '0': 0 is outside 1-31"),
        ("0 3 * 13 *", "month field '13'"),
        ("0 3 * * 8", "day of week field '8'"),
        ("0 3 * * sunday", "'sunday' is not a number or a name"),
        ("0 5-3 * * *", "the range '5-3' runs backwards"),
        ("5/10 * * * *", "a step needs a range or \\*"),
        ("*/0 * * * *", "step .* at least 1"),
        ("*/61 * * * *", "longer than the field's whole range"),
        ("0 3 ,1 * *", "'' is not a value"),
        ("0 3 1 * 1", "restricts both the day of month .* either matches"),
        ("0 3 L * *", "'L' is not a number"),
    ],
)
def test_bad_cron_names_the_field_and_what_is_allowed(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timing.parse_cron(expr)


def _next(trigger: object, after: datetime) -> datetime:
    return trigger.get_next_fire_time(None, after)  # type: ignore[attr-defined,no-any-return]


def test_the_trigger_fires_on_crontabs_monday_in_the_schedules_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    trigger = timing.build_trigger(
        cron="0 3 * * 1", every_s=None, timezone="Europe/Berlin", anchor=0
    )
    # Wednesday 2026-03-04, noon: the next Monday is 2026-03-09.
    fire = _next(trigger, datetime(2026, 3, 4, 12, 0, tzinfo=UTC))
    assert fire.astimezone(berlin).replace(tzinfo=None) == datetime(2026, 3, 9, 3, 0)
    assert fire.astimezone(berlin).weekday() == 0  # Monday
    # Across the spring DST change (2026-03-29) it stays at 03:00 local time.
    fire = _next(trigger, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert fire.astimezone(berlin).replace(tzinfo=None) == datetime(2026, 3, 30, 3, 0)
    assert fire.utcoffset() is not None and fire.astimezone(UTC).hour == 1


def test_an_interval_keeps_its_grid_from_the_anchor() -> None:
    anchor = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC).timestamp()
    for _ in range(2):  # rebuilt after a restart: the same times
        trigger = timing.build_trigger(cron=None, every_s=7, timezone="UTC", anchor=anchor + 0.4)
        fire = _next(trigger, datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC))
        assert fire == datetime(2026, 1, 1, 0, 1, 3, tzinfo=UTC)  # 63 = 9 x 7


def test_time_zones_are_iana_names_with_a_suggestion() -> None:
    assert timing.check_timezone("Europe/Berlin") == "Europe/Berlin"
    assert timing.check_timezone("UTC") == "UTC"
    with pytest.raises(ValueError, match="did you mean 'Europe/Berlin'"):
        timing.check_timezone("Europe/Berln")
    for bad in ("../../etc/passwd", "", "Mars/Olympus"):
        with pytest.raises(ValueError, match="unknown time zone"):
            timing.check_timezone(bad)


def test_intervals_respect_the_configured_minimum() -> None:
    assert timing.check_every_s(60, 60) == 60
    with pytest.raises(ValueError, match="outside 60-"):
        timing.check_every_s(59, 60)
    with pytest.raises(ValueError, match="whole number of seconds"):
        timing.check_every_s(True, 1)  # type: ignore[arg-type]


# --- catch-up and overlap ----------------------------------------------------------------------

NOW = 1_800_000_000.0


def test_an_on_time_firing_just_fires() -> None:
    plans = timing.plan_firings([NOW - 0.2], NOW, catch_up="one", grace_s=3600)
    assert plans == [timing.Planned(NOW - 0.2, True, "scheduled", "")]


def test_missed_firings_give_exactly_one_catch_up_for_the_latest() -> None:
    times = [NOW - 40, NOW - 30, NOW - 20, NOW - 10]
    plans = timing.plan_firings(times, NOW, catch_up="one", grace_s=3600)
    assert len(plans) == 1
    assert (plans[0].scheduled_for, plans[0].fire, plans[0].kind) == (NOW - 10, True, "catch-up")
    assert "4 firing(s) missed" in plans[0].reason


def test_a_single_late_firing_is_a_catch_up_too() -> None:
    plans = timing.plan_firings([NOW - 7200], NOW, catch_up="one", grace_s=3 * 3600)
    assert [(p.fire, p.kind) for p in plans] == [(True, "catch-up")]


def test_several_late_times_while_the_daemon_ran_are_one_ordinary_firing() -> None:
    # A busy scheduler thread delivered two due times of a 2-second schedule at once: the
    # daemon was up all along, so this is no catch-up and its reason must not say it was down.
    times = [NOW - 3.5, NOW - 1.5]
    plans = timing.plan_firings(times, NOW, catch_up="one", grace_s=3600, up_since=NOW - 60)
    assert [(p.scheduled_for, p.fire, p.kind) for p in plans] == [(NOW - 1.5, True, "scheduled")]
    assert "1 earlier due time(s)" in plans[0].reason
    assert "not running" not in plans[0].reason
    # "all" does not fire each of them either: they were not missed.
    every = timing.plan_firings(times, NOW, catch_up="all", grace_s=3600, up_since=NOW - 60)
    assert [(p.scheduled_for, p.kind) for p in every] == [(NOW - 1.5, "scheduled")]


def test_times_from_before_the_daemon_began_firing_are_a_catch_up() -> None:
    # Down until NOW - 2: the first two times fell while it was down, the last while it started.
    times = [NOW - 6, NOW - 4, NOW - 1]
    plans = timing.plan_firings(times, NOW, catch_up="one", grace_s=3600, up_since=NOW - 2)
    assert [(p.scheduled_for, p.kind) for p in plans] == [(NOW - 1, "catch-up")]
    assert "3 firing(s) missed" in plans[0].reason
    # Nor is a time due while running but later than ON_TIME_S on time (a suspended daemon).
    late = NOW - timing.ON_TIME_S - 5
    stale = timing.plan_firings([late - 2, late], NOW, catch_up="one", grace_s=3600, up_since=0)
    assert [(p.scheduled_for, p.kind) for p in stale] == [(late, "catch-up")]
    # A 30-second schedule of a daemon suspended for six hours: its latest time is always
    # recent, but the first is hours old. The policy decides, not the busy rule.
    suspended = [NOW - 6 * 3600 + 30 * i for i in range(720)]
    every = timing.plan_firings(suspended, NOW, catch_up="all", grace_s=3600, up_since=0)
    assert len(every) == 120 and {p.kind for p in every} == {"catch-up"}


def test_beyond_the_grace_nothing_runs_and_the_reason_says_so() -> None:
    plans = timing.plan_firings([NOW - 9000, NOW - 5000], NOW, catch_up="one", grace_s=3600)
    assert [(p.scheduled_for, p.fire) for p in plans] == [(NOW - 5000, False)]
    assert "beyond the catch-up grace of 3600 s" in plans[0].reason


def test_catch_up_none_records_the_miss_and_all_fires_each_within_the_grace() -> None:
    times = [NOW - 5000, NOW - 300, NOW - 200]
    none = timing.plan_firings(times, NOW, catch_up="none", grace_s=3600)
    assert [(p.scheduled_for, p.fire) for p in none] == [(NOW - 200, False)]
    assert "catch_up is none" in none[0].reason
    every = timing.plan_firings(times, NOW, catch_up="all", grace_s=3600)
    assert [(p.scheduled_for, p.fire) for p in every] == [(NOW - 300, True), (NOW - 200, True)]


def test_a_fixed_hour_fires_once_when_the_clocks_go_back() -> None:
    # Europe/Berlin, 2025-10-26: 02:30 comes at 00:30 UTC (summer time) and again at 01:30 UTC.
    first, again = 1761438600.0, 1761442200.0
    trigger = timing.build_trigger(
        cron="30 2 * * *", every_s=None, timezone="Europe/Berlin", anchor=0
    )
    before = datetime(2025, 10, 26, 0, 0, tzinfo=UTC)
    due = trigger.get_next_fire_time(None, before)
    assert due is not None and due.timestamp() == first
    later = trigger.get_next_fire_time(due, due)
    assert later is not None and later.timestamp() == again, "APScheduler gives both"
    assert not timing.repeated_wall_time(first, "30 2 * * *", "Europe/Berlin")
    assert timing.repeated_wall_time(again, "30 2 * * *", "Europe/Berlin")
    # Every hour (or every other) fires in both real hours, as crontab does; so does UTC.
    assert not timing.repeated_wall_time(again, "30 * * * *", "Europe/Berlin")
    assert not timing.repeated_wall_time(again, "30 */2 * * *", "Europe/Berlin")
    assert not timing.repeated_wall_time(again, "30 1 * * *", "UTC")
    assert not timing.repeated_wall_time(again, None, "Europe/Berlin")


def test_overlap_is_skipped_unless_allowed() -> None:
    reason = timing.overlap_reason(12, "RUNNING", allow_overlap=False)
    assert reason is not None and "run 12" in reason and "RUNNING" in reason
    assert timing.overlap_reason(12, "RUNNING", allow_overlap=True) is None
    assert timing.overlap_reason(None, None, allow_overlap=False) is None


# --- the spec's schedule block -----------------------------------------------------------------

BASE = "name: train\nexperiment: e\ncommand: python train.py\n"


def test_a_schedule_block_is_read_and_written_back() -> None:
    text = BASE + (
        "schedule:\n  cron: '0  3 * * 1'\n  timezone: Europe/Berlin\n  name: weekly\n"
        "  catch_up: none\n  allow_overlap: true\n"
    )
    spec = parse_spec(text, "t")
    assert spec.schedule is not None
    assert spec.schedule.cron == "0 3 * * 1"
    assert (spec.schedule.timezone, spec.schedule.name) == ("Europe/Berlin", "weekly")
    assert parse_spec(spec_to_yaml(spec), "t") == spec


def test_a_spec_without_a_schedule_block_keeps_its_canonical_text() -> None:
    assert "schedule" not in spec_to_yaml(parse_spec(BASE, "t"))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{}", "schedule: needs exactly one of cron"),
        ("{cron: '0 3 * * 1', every_s: 60}", "schedule: needs exactly one of cron"),
        ("{cron: '0 3 * *'}", "schedule.cron: a cron expression has 5 fields"),
        ("{every_s: 0}", "schedule.every_s: must be between 1 and"),
        ("{every_s: '60'}", "schedule.every_s: expected an integer"),
        ("{cron: '0 3 * * 1', timezone: Berlin}", "schedule.timezone: unknown time zone"),
        ("{cron: '0 3 * * 1', catch_up: some}", "schedule.catch_up: 'some' is not one of"),
        ("{cron: '0 3 * * 1', name: 'a b'}", "schedule.name: contains a space"),
        ("{cron: '0 3 * * 1', crn: x}", "unknown field 'crn'; did you mean 'cron'"),
    ],
)
def test_a_bad_schedule_block_names_its_field(block: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(BASE + f"schedule: {block}\n", "t")


# --- the store ---------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "hpcops.db")


def _schedule(store: Store, name: str = "nightly", **fields: object) -> Schedule:
    values: dict[str, object] = {
        "name": name,
        "owner": "alice",
        "owner_uid": 1000,
        "spec_yaml": BASE,
        "spec_name": "train",
        "cron": "0 3 * * 1",
        "timezone": "UTC",
        "catch_up": "one",
        "catch_up_grace_s": 3600,
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    values.update(fields)
    return store.add_schedule(Schedule(**values))  # type: ignore[arg-type]


def _run() -> Run:
    return Run(
        name="train",
        experiment="e",
        owner="alice",
        owner_uid=1000,
        state=RunState.QUEUED.value,
        spec_yaml=BASE,
        spec_hash="h",
        created_at=0.0,
        updated_at=0.0,
    )


def _firing(schedule: Schedule, at: float, kind: str = "scheduled") -> Firing:
    assert schedule.id is not None
    return Firing(
        schedule_id=schedule.id,
        scheduled_for=at,
        fired_at=at,
        kind=kind,
        actor="daemon",
        outcome="submitted",
    )


def test_a_firing_and_its_run_are_recorded_together_and_only_once(store: Store) -> None:
    schedule = _schedule(store)
    firing, new = store.record_firing(
        _firing(schedule, 100.0), _run(), allow_overlap=True, run_note="queued by schedule 1"
    )
    assert new and firing.outcome == "submitted" and firing.run_id is not None
    run = store.get(firing.run_id)
    assert (run.schedule_id, run.firing_id) == (schedule.id, firing.id)
    assert "queued by schedule 1, firing" in store.events(firing.run_id)[0].reason
    # The same scheduled time again (a restart after the commit): nothing new.
    again, new = store.record_firing(
        _firing(schedule, 100.0), _run(), allow_overlap=True, run_note="x"
    )
    assert not new and again.id == firing.id
    assert len(store.list_runs()) == 1


def test_overlap_is_decided_inside_the_firings_transaction(store: Store) -> None:
    schedule = _schedule(store)
    first, _ = store.record_firing(
        _firing(schedule, 100.0), _run(), allow_overlap=False, run_note=""
    )
    second, _ = store.record_firing(
        _firing(schedule, 200.0), _run(), allow_overlap=False, run_note=""
    )
    assert second.outcome == "skipped" and second.run_id is None
    assert f"run {first.run_id}" in second.reason and "QUEUED" in second.reason
    assert first.run_id is not None
    # Its end marker seen: the command is over, even before sacct's final record.
    store.transition(first.run_id, RunState.SUBMITTING, actor="daemon")
    store.transition(first.run_id, RunState.RUNNING, actor="daemon")
    store.transition(first.run_id, None, actor="daemon", end_seen_at=250.0)
    third, _ = store.record_firing(
        _firing(schedule, 300.0), _run(), allow_overlap=False, run_note=""
    )
    assert third.outcome == "submitted"
    assert [f.outcome for f, _ in store.firings(_id(schedule))] == [
        "submitted",
        "skipped",
        "submitted",
    ]


def test_errors_are_remembered_until_a_firing_queues_again(store: Store) -> None:
    schedule = _schedule(store)
    failed = _firing(schedule, 100.0)
    failed.outcome, failed.reason = "error", "the spec is broken"
    store.record_firing(failed, None, allow_overlap=True, run_note="")
    assert store.get_schedule(_id(schedule)).last_error == "the spec is broken"
    store.record_firing(_firing(schedule, 200.0), _run(), allow_overlap=True, run_note="")
    assert store.get_schedule(_id(schedule)).last_error is None
    latest, state = store.latest_firings()[_id(schedule)]
    assert (latest.scheduled_for, state) == (200.0, "QUEUED")


def test_names_are_unique_among_schedules_not_removed(store: Store) -> None:
    first = _schedule(store)
    with pytest.raises(InvalidInput, match="named 'nightly' exists already"):
        _schedule(store)
    store.update_schedule(_id(first), removed_at=5.0, removed_by="alice")
    second = _schedule(store)
    assert store.find_schedule("nightly").id == second.id
    assert store.find_schedule(_id(first)).removed_by == "alice"
    assert [s.id for s in store.schedules()] == [second.id]
    assert len(store.schedules(include_removed=True)) == 2


def _id(schedule: Schedule) -> int:
    assert schedule.id is not None
    return schedule.id
