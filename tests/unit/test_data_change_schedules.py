"""On-data-change schedules without a daemon: the fire-or-not decision, the checks on what a
schedule may watch, the spec's schedule block and the config, and what the store keeps of
checks and of the data versions each firing was for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from hpcops.api.views import schedule_view
from hpcops.cadence import cadence
from hpcops.config_sections import SchedulesConfig
from hpcops.errors import SpecError
from hpcops.scheduling.datachange import (
    TargetVersion,
    check_check_every_s,
    decide,
    versions_from_data_json,
    watch_problem,
)
from hpcops.spec import parse_spec, spec_to_yaml
from hpcops.states import RunState
from hpcops.store import Firing, Run, Schedule, Store

A = "a" * 32 + ".dir"
B = "b" * 32 + ".dir"
C = "c" * 32
SHA = "0123456789abcdef0123456789abcdef01234567"

# --- the decision ------------------------------------------------------------------------------


def _v(*md5s: str) -> tuple[TargetVersion, ...]:
    return tuple(TargetVersion(f"data/t{i}", md5) for i, md5 in enumerate(md5s))


def _decide(current: tuple[TargetVersion, ...], **given: object) -> tuple[bool, str]:
    args: dict[str, object] = {
        "fired": None,
        "failed": None,
        "active_run": None,
        "active_state": None,
        "allow_overlap": False,
    }
    args.update(given)
    decision = decide(current, **args)  # type: ignore[arg-type]
    return decision.fire, decision.result


def test_a_schedule_that_never_fired_fires_on_its_first_check() -> None:
    fire, result = _decide(_v(A))
    assert fire and result == "first version: data/t0 aaaaaaaaaaaa"


def test_the_same_versions_as_the_last_run_fire_nothing() -> None:
    fire, result = _decide(_v(A, C), fired=_v(A, C))
    assert not fire and result.startswith("no change: data/t0 aaaaaaaaaaaa, data/t1 cccc")


def test_a_changed_target_fires_and_the_result_names_only_that_target() -> None:
    fire, result = _decide(_v(A, B), fired=_v(A, C))
    assert fire and result == "changed: data/t1 cccccccccccc -> bbbbbbbbbbbb"


def test_a_change_back_to_an_older_version_is_a_change_too() -> None:
    """Judged against the last run only: reverting the data retrains on the reverted data."""
    assert _decide(_v(A), fired=_v(B))[0]


def test_a_change_waits_while_an_earlier_run_is_active_and_overlap_is_not_allowed() -> None:
    fire, result = _decide(_v(B), fired=_v(A), active_run=7, active_state="RUNNING")
    assert not fire
    assert result.startswith("waiting: changed data/t0 aaaa") and "run 7 (RUNNING)" in result
    # With overlap allowed, it fires at once.
    assert _decide(_v(B), fired=_v(A), active_run=7, active_state="RUNNING", allow_overlap=True)[0]
    # No change and an active run: simply no change (nothing to wait for).
    fire, result = _decide(_v(A), fired=_v(A), active_run=7, active_state="RUNNING")
    assert not fire and result.startswith("no change")


def test_a_failed_firing_is_not_retried_for_the_same_versions() -> None:
    fire, result = _decide(_v(B), fired=_v(A), failed=_v(B))
    assert not fire and result.startswith("not retried: the firing for data/t0 bbbb")
    # The data moves on: it fires again.
    assert _decide(_v(C), fired=_v(A), failed=_v(B))[0]
    # Never fired successfully, first firing failed, same data: no retry either.
    assert not _decide(_v(B), failed=_v(B))[0]


def test_versions_are_read_from_a_runs_data_json() -> None:
    text = json.dumps(
        [{"path": "data/ds", "md5": A, "repo": ".", "rev": SHA, "size": 3, "nfiles": 2}]
    )
    assert versions_from_data_json(text) == (TargetVersion("data/ds", A),)
    assert versions_from_data_json(None) is None
    assert versions_from_data_json("") is None


# --- what may be watched, and how often --------------------------------------------------------

BASE = "name: train\nexperiment: e\ncommand: python train.py\n"


def test_check_intervals_respect_the_configured_minimum() -> None:
    assert check_check_every_s(300, 60) == 300
    with pytest.raises(ValueError, match=r"30 s is outside 60-2678400 s .*min_interval_s"):
        check_check_every_s(30, 60)
    with pytest.raises(ValueError, match="outside"):
        check_check_every_s(32 * 86400, 60)
    for bad in (True, "300", 2.5):
        with pytest.raises(ValueError, match="whole number of seconds"):
            check_check_every_s(bad, 60)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("", "the spec has no data: targets to watch"),
        (
            f"code: {{repo: /r, commit: {SHA}}}\ndata: [{{path: d}}]\n",
            "read at a fixed commit",
        ),
        (
            f"data: [{{path: d, repo: 'https://example.org/r.git', rev: {SHA}}}]\n",
            "read at a fixed commit",
        ),
        ("code: {repo: /r, commit: main}\ndata: [{path: d}]\n", None),
        ("data: [{path: d, repo: 'https://example.org/r.git'}]\n", None),
        ("data: [{path: d, repo: 'https://example.org/r.git', rev: v2}]\n", None),
        (
            f"code: {{repo: /r, commit: {SHA}}}\n"
            "data: [{path: d}, {path: e, repo: 'https://example.org/r.git', rev: main}]\n",
            None,
        ),
    ],
)
def test_only_a_spec_whose_data_can_move_may_be_watched(extra: str, problem: str | None) -> None:
    found = watch_problem(parse_spec(BASE + extra, "t"))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_an_on_data_change_block_is_read_and_written_back() -> None:
    spec = parse_spec(BASE + "schedule: {on_data_change: true, check_every_s: 600}\n", "t")
    assert spec.schedule is not None
    assert (spec.schedule.on_data_change, spec.schedule.check_every_s) == (True, 600)
    assert parse_spec(spec_to_yaml(spec), "t") == spec


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{on_data_change: true, cron: '0 3 * * 1'}", "schedule: needs exactly one of cron"),
        ("{on_data_change: true, every_s: 60}", "schedule: needs exactly one of cron"),
        ("{on_data_change: false}", "schedule: needs exactly one of cron"),
        ("{every_s: 60, check_every_s: 30}", "check_every_s .* needs on_data_change: true"),
        ("{on_data_change: true, check_every_s: 0}", "schedule.check_every_s: must be between"),
        ("{on_data_change: yes please}", "schedule.on_data_change: expected true or false"),
    ],
)
def test_a_bad_on_data_change_block_names_its_field(block: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(BASE + f"schedule: {block}\n", "t")


def test_the_configs_default_check_interval_is_within_its_minimum() -> None:
    assert SchedulesConfig().check_every_s == 300
    with pytest.raises(ValidationError, match="check_every_s \\(30\\) is below min_interval_s"):
        SchedulesConfig(min_interval_s=60, check_every_s=30)


def test_the_trigger_in_words() -> None:
    assert cadence(None, None, "UTC", 300) == "on data change, checked every 300 s"
    assert cadence(None, 60, "UTC") == "every 60 s"


# --- the store -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "hpcops.db")


def _schedule(store: Store) -> Schedule:
    return store.add_schedule(
        Schedule(
            name="retrain",
            owner="alice",
            owner_uid=1000,
            spec_yaml=BASE,
            spec_name="train",
            timezone="UTC",
            catch_up="one",
            catch_up_grace_s=3600,
            on_data_change=True,
            check_every_s=300,
            created_at=1.0,
            updated_at=1.0,
        )
    )


def _data(md5: str) -> str:
    return json.dumps([{"path": "data/ds", "md5": md5}])


def _run(md5: str) -> Run:
    return Run(
        name="train",
        experiment="e",
        owner="alice",
        owner_uid=1000,
        state=RunState.QUEUED.value,
        spec_yaml=BASE,
        spec_hash="h",
        data_json=_data(md5),
        created_at=0.0,
        updated_at=0.0,
    )


def _firing(schedule: Schedule, at: float, outcome: str = "submitted", **more: object) -> Firing:
    assert schedule.id is not None
    return Firing(
        schedule_id=schedule.id,
        scheduled_for=at,
        fired_at=at,
        kind="data-change",
        actor="daemon",
        outcome=outcome,
        **more,  # type: ignore[arg-type]
    )


def test_the_baseline_is_the_last_submitted_runs_data_and_a_failure_after_it(
    store: Store,
) -> None:
    schedule = _schedule(store)
    sid = schedule.id
    assert sid is not None
    assert store.data_baseline(sid) == (None, None)
    assert store.active_scheduled_run(sid) is None

    # The firing keeps its run's versions, whatever the check had read before.
    first, _ = store.record_firing(
        _firing(schedule, 10.0, data_json=_data(B)), _run(A), allow_overlap=True, run_note=""
    )
    assert first.data_json == _data(A)
    assert store.data_baseline(sid) == (_data(A), None)
    assert first.run_id is not None
    assert store.active_scheduled_run(sid) == (first.run_id, "QUEUED")

    failed = _firing(schedule, 20.0, "error", data_json=_data(B), reason="no template")
    store.record_firing(failed, None, allow_overlap=True, run_note="")
    assert store.data_baseline(sid) == (_data(A), _data(B))

    # A later successful firing makes the failure history.
    store.transition(first.run_id, RunState.CANCELLED, actor="alice")
    store.record_firing(_firing(schedule, 30.0), _run(C), allow_overlap=False, run_note="")
    assert store.data_baseline(sid) == (_data(C), None)
    shown = [f.data_json for f, _ in store.firings(sid)]
    assert shown == [_data(C), _data(B), _data(A)]


def test_a_failed_check_breaks_the_schedule_until_a_good_one(store: Store) -> None:
    schedule = _schedule(store)
    assert schedule.id is not None

    def status() -> tuple[str, str | None, dict[str, object] | None]:
        view = schedule_view(
            store.get_schedule(schedule.id or 0), next_fire_at=None, problem=None, last_firing=None
        )
        return view["status"], view["last_error"], view["last_check"]

    assert status() == ("active", None, None)
    store.record_check(schedule.id, at=100.0, ok=False, result="failed: cannot fetch 'main'")
    state, error, check = status()
    assert (state, error) == ("broken", "failed: cannot fetch 'main'")
    assert check == {
        "at": "1970-01-01T00:01:40Z",
        "ok": False,
        "summary": "failed",
        "result": "failed: cannot fetch 'main'",
    }
    store.record_check(schedule.id, at=200.0, ok=True, result="no change: data/ds aaaa")
    state, error, check = status()
    assert (state, error) == ("active", None)
    assert check is not None and check["summary"] == "no change"
    # A good check leaves a firing's error alone: only its own is its to clear.
    store.update_schedule(schedule.id, last_error="the spec is broken")
    store.record_check(schedule.id, at=300.0, ok=True, result="no change: data/ds aaaa")
    assert status()[:2] == ("active", "the spec is broken")
