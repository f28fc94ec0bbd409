"""Schedules that fire a pipeline (issue 15): the real ScheduleService and Store over the engine
and the fake Slurm. A pipeline schedule is checked as a firing would queue it when it is added
(nothing stored on a bad one); each firing queues the whole pipeline with its firing record in
one transaction, once per scheduled time, also across a crash; the overlap and catch-up rules
apply to the pipeline as a whole."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from api_fakes import error, ok

from hpcops.api.server import Api
from hpcops.code.mirror import CodeMirror
from hpcops.data.cache import ContentCache
from hpcops.errors import InvalidInput
from hpcops.home import HomePaths
from hpcops.pipeline import Pipeline as LoadedPipeline
from hpcops.pipeline import load_pipeline_file, pipeline_from_wire, pipeline_to_wire
from hpcops.scheduling.service import ScheduleService
from hpcops.scheduling.settings import ScheduleOptions
from hpcops.store import Firing, Schedule, Store

from .engine_harness import ALICE, EngineFactory, EngineHarness
from .fakeslurm import DaemonCrash

LAB = {"access": {"members": ["alice"]}}
EVERY_HOUR = ScheduleOptions(every_s=3600)

PIPELINE = """\
name: nightly-retrain
steps:
  prepare: {spec: prepare.yaml}
  train: {spec: sweep.yaml, after: [prepare]}
  evaluate: {spec: evaluate.yaml, after: [train]}
"""
SPECS = {
    "prepare.yaml": "name: prepare\nexperiment: e\ncommand: python prepare.py\n",
    "sweep.yaml": (
        "name: train\nexperiment: e\ncommand: python train.py\nsweep: {grid: {lr: [0.1, 0.01]}}\n"
    ),
    "evaluate.yaml": "name: evaluate\nexperiment: e\ncommand: python evaluate.py\n",
}


def write_pipeline(folder: Path, **specs: str) -> Path:
    """The pipeline file and its steps' spec files in `folder`; `specs` replaces some."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in {**SPECS, **specs}.items():
        (folder / name).write_text(text)
    path = folder / "pipeline.yaml"
    path.write_text(PIPELINE)
    return path


def _service(h: EngineHarness, fault: str | None = None) -> ScheduleService:
    """Never started: firings are made in the test's thread, no APScheduler, no pool."""
    return ScheduleService(
        h.store,
        h.engine,  # type: ignore[arg-type]
        h.config,
        daemon_uid=0,
        clock=h.clock,
        fault=fault,
    )


def _loaded(folder: Path, **specs: str) -> LoadedPipeline:
    return load_pipeline_file(write_pipeline(folder, **specs))


def _add(
    h: EngineHarness, folder: Path, options: ScheduleOptions = EVERY_HOUR, **specs: str
) -> tuple[ScheduleService, Schedule]:
    service = _service(h)
    return service, service.add_pipeline(_loaded(folder, **specs), options, ALICE)


def _fire(service: ScheduleService, schedule: Schedule, at: float) -> tuple[Firing, bool]:
    return service._firer.fire(schedule, at, kind="scheduled", actor="daemon")


def _sid(schedule: Schedule) -> int:
    assert schedule.id is not None
    return schedule.id


# --- adding ------------------------------------------------------------------------------------


def test_a_pipeline_schedule_keeps_the_unpinned_pipeline_and_queues_nothing(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    h = make_engine(LAB)
    _, schedule = _add(h, tmp_path / "p")
    assert (schedule.kind, schedule.spec_name, schedule.name) == (
        "pipeline",
        "nightly-retrain",
        "nightly-retrain",
    )
    assert schedule.pipeline_json is not None
    stored = pipeline_from_wire(json.loads(schedule.pipeline_json), "stored")
    assert list(stored.steps) == ["prepare", "train", "evaluate"]
    assert stored.specs["train"].sweep is not None
    assert "nightly-retrain" in schedule.spec_yaml and "prepare" in schedule.spec_yaml
    assert h.store.list_runs() == [] and h.store.list_pipelines() == []


@pytest.mark.parametrize(
    ("options", "specs", "message"),
    [
        (
            EVERY_HOUR,
            {"evaluate.yaml": SPECS["evaluate.yaml"] + "resources: {partition: nope}\n"},
            "(?s)step evaluate: .*no partition 'nope'",
        ),
        (
            # Code the daemon cannot check out: refused now, not at every firing.
            EVERY_HOUR,
            {
                "prepare.yaml": SPECS["prepare.yaml"]
                + "code: {repo: /nowhere/repo, commit: "
                + "0123456789abcdef0123456789abcdef01234567}\n"
            },
            "(?s)step prepare: .*code: ",
        ),
        (ScheduleOptions(on_data_change=True), {}, "a pipeline fires on --cron or --every"),
        (ScheduleOptions(), {}, "a pipeline's schedule needs exactly one of --cron"),
        (ScheduleOptions(cron="0 3 * *"), {}, "cron '0 3 \\* \\*'"),
    ],
)
def test_a_pipeline_that_a_firing_could_not_queue_is_refused_and_nothing_stored(
    make_engine: EngineFactory,
    tmp_path: Path,
    options: ScheduleOptions,
    specs: dict[str, str],
    message: str,
) -> None:
    h = make_engine(LAB)
    with pytest.raises(InvalidInput, match=message) as refused:
        _add(h, tmp_path / "p", options, **specs)
    assert refused.value.exit_code == 2
    assert h.store.schedules(include_removed=True) == []
    assert h.store.list_runs() == [] and h.store.list_pipelines() == []


# --- firing ------------------------------------------------------------------------------------


def test_a_firing_queues_the_whole_pipeline_with_its_record(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    h = make_engine(LAB)
    service, schedule = _add(h, tmp_path / "p")
    firing, new = _fire(service, schedule, h.clock() + 0.5)
    assert new and firing.outcome == "submitted", firing.reason
    assert firing.run_id is None and firing.pipeline_id is not None
    [pipeline] = h.store.list_pipelines()
    assert (pipeline.id, pipeline.schedule_id, pipeline.firing_id) == (
        firing.pipeline_id,
        schedule.id,
        firing.id,
    )
    assert pipeline.owner == "alice"
    steps = h.store.pipeline_steps([firing.pipeline_id])[firing.pipeline_id]
    assert [(s.name, s.kind) for s in steps] == [
        ("prepare", "run"),
        ("train", "sweep"),
        ("evaluate", "run"),
    ]
    runs = h.store.pipeline_runs(firing.pipeline_id)
    assert len(runs) == 4  # prepare, two points of train, evaluate
    assert all(r.gated and r.schedule_id == schedule.id for r in runs)
    assert {r.firing_id for r in runs} == {firing.id}
    assert "queued by schedule" in h.notes(runs[0].id or 0)[0]
    # The views: the schedule's latest firing queued p<id>, and that pipeline is under way.
    latest, state = h.store.latest_firings()[_sid(schedule)]
    assert (latest.pipeline_id, state) == (pipeline.id, "RUNNING")


def test_a_firing_repeated_for_the_same_time_queues_nothing_twice(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    h = make_engine(LAB)
    service, schedule = _add(h, tmp_path / "p")
    at = h.clock() + 0.5
    first, _ = _fire(service, schedule, at)
    again, new = _fire(service, schedule, at)
    assert not new and again.id == first.id and again.pipeline_id == first.pipeline_id
    assert len(h.store.list_pipelines()) == 1 and len(h.store.list_runs()) == 4


@pytest.mark.parametrize(
    ("fault", "committed"), [("firing_before_commit", 0), ("firing_after_commit", 1)]
)
def test_a_crash_around_the_commit_loses_no_pipeline_and_queues_none_twice(
    make_engine: EngineFactory, tmp_path: Path, fault: str, committed: int
) -> None:
    h = make_engine(LAB)
    _, schedule = _add(h, tmp_path / "p")
    at = h.clock() + 0.5
    with pytest.raises(DaemonCrash):
        _fire(_service(h, fault=fault), schedule, at)
    # The pipeline and the firing's record: both committed, or neither.
    assert len(h.store.list_pipelines()) == committed == len(h.store.firings(_sid(schedule)))
    h.restart()
    # The next daemon is told the same time is due (APScheduler had not moved on).
    again, new = _fire(_service(h), h.store.get_schedule(_sid(schedule)), at)
    assert new == (committed == 0) and again.outcome == "submitted"
    assert len(h.store.list_pipelines()) == 1 and len(h.store.list_runs()) == 4


# --- overlap and catch-up ----------------------------------------------------------------------


def test_a_firing_is_skipped_while_the_previous_pipeline_has_not_ended(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    h = make_engine(LAB)
    service, schedule = _add(h, tmp_path / "p")
    first, _ = _fire(service, schedule, h.clock() + 0.5)
    assert first.pipeline_id is not None
    second, _ = _fire(service, schedule, h.clock() + 3600.5)
    assert second.outcome == "skipped" and second.pipeline_id is None
    assert f"pipeline p{first.pipeline_id} from an earlier firing" in second.reason
    assert len(h.store.list_pipelines()) == 1 and len(h.store.list_runs()) == 4
    # Ended (every step: the engine's tick sets it): the next firing queues again.
    h.store.update_pipeline(first.pipeline_id, ended_at=h.clock(), outcome="COMPLETED")
    third, _ = _fire(service, schedule, h.clock() + 7200.5)
    assert third.outcome == "submitted" and third.pipeline_id not in (None, first.pipeline_id)
    outcomes = [(f.outcome, state) for f, state in h.store.firings(_sid(schedule))]
    assert outcomes == [("submitted", "RUNNING"), ("skipped", None), ("submitted", "COMPLETED")]


def test_overlap_allowed_queues_a_pipeline_beside_the_open_one(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    h = make_engine(LAB)
    service, schedule = _add(h, tmp_path / "p", ScheduleOptions(every_s=3600, allow_overlap=True))
    _fire(service, schedule, h.clock() + 0.5)
    second, _ = _fire(service, schedule, h.clock() + 3600.5)
    assert second.outcome == "submitted"
    assert len(h.store.list_pipelines()) == 2


def _due(h: EngineHarness, *ago_s: float) -> list[datetime]:
    return [datetime.fromtimestamp(h.clock() - s, UTC) for s in ago_s]


def _complete_claims(service: ScheduleService, store: Store) -> None:
    """What the firer's pool does with each claim (and the next start with one a crash left)."""
    for claimed in store.pending_firings():
        service._firer._fire_claimed(claimed)


@pytest.mark.parametrize(
    ("catch_up", "outcomes"),
    [("one", ["submitted"]), ("all", ["submitted"] * 3), ("none", ["skipped"])],
)
def test_missed_firings_catch_up_with_whole_pipelines_as_a_spec_would(
    make_engine: EngineFactory, tmp_path: Path, catch_up: str, outcomes: list[str]
) -> None:
    h = make_engine(LAB)
    options = ScheduleOptions(every_s=600, catch_up=catch_up, allow_overlap=True)
    service, schedule = _add(h, tmp_path / "p", options)
    # The daemon was down: three times came due, the last ten minutes ago, all within the grace.
    service._on_due(_sid(schedule), _due(h, 1800, 1200, 600))
    _complete_claims(service, h.store)
    firings = list(reversed(h.store.firings(_sid(schedule))))
    assert [(f.kind, f.outcome) for f, _ in firings] == [("catch-up", o) for o in outcomes]
    queued = outcomes.count("submitted")
    assert [p.firing_id for p in h.store.list_pipelines()] == [f.id for f, _ in firings][:queued]
    assert len(h.store.list_runs()) == 4 * queued


def test_a_missed_firing_beyond_the_grace_queues_no_pipeline(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    h = make_engine(LAB)
    options = ScheduleOptions(every_s=3600, catch_up_grace_s=600)
    service, schedule = _add(h, tmp_path / "p", options)
    service._on_due(_sid(schedule), _due(h, 7200))
    _complete_claims(service, h.store)
    [(firing, _)] = h.store.firings(_sid(schedule))
    assert firing.outcome == "skipped" and "beyond the catch-up grace" in firing.reason
    assert h.store.list_pipelines() == []


# --- checks and old databases ------------------------------------------------------------------


def test_a_pipeline_schedule_owner_no_longer_a_member_fires_an_error_and_queues_nothing(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    h = make_engine(LAB)
    service, schedule = _add(h, tmp_path / "p")
    h.config.access.members.clear()
    firing, _ = _fire(service, schedule, h.clock() + 0.5)
    assert firing.outcome == "error" and "may no longer submit" in firing.reason
    assert h.store.list_pipelines() == [] and h.store.list_runs() == []
    assert h.store.get_schedule(_sid(schedule)).last_error == firing.reason


def test_a_pipeline_schedule_shows_a_problem_when_a_step_no_longer_fits(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    h = make_engine(LAB)
    service, schedule = _add(h, tmp_path / "p")
    assert service.problem(schedule) is None
    assert schedule.pipeline_json is not None
    # As if the cluster lost the partition the steps were added for.
    gone = schedule.pipeline_json.replace("partition: null", "partition: gone")
    problem = service.problem(schedule.model_copy(update={"pipeline_json": gone}))
    assert problem is not None and "step prepare" in problem and "'gone'" in problem


def test_an_old_database_gets_the_new_columns_and_its_schedules_fire_specs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE schedule DROP COLUMN kind")
        db.execute("ALTER TABLE schedule DROP COLUMN pipeline_json")
        db.execute("ALTER TABLE firing DROP COLUMN pipeline_id")
        db.execute(
            "INSERT INTO schedule (name, owner, owner_uid, spec_yaml, spec_name, timezone, "
            "catch_up, catch_up_grace_s, allow_overlap, paused, on_data_change, created_at, "
            "updated_at, every_s) VALUES ('old', 'alice', 1001, 'name: t', 't', 'UTC', 'one', "
            "3600, 0, 0, 0, 1.0, 1.0, 3600)"
        )
    store = Store(path)
    [old] = store.schedules()
    assert (old.kind, old.pipeline_json) == ("spec", None)
    assert store.latest_firings() == {}


# --- through the API ---------------------------------------------------------------------------


def _api(h: EngineHarness, service: ScheduleService) -> Api:
    return Api(
        h.engine,  # type: ignore[arg-type]
        h.store,
        config=h.config,
        home=h.home,
        files=h.slurm,
        code_mirror=CodeMirror(h.config.code_root_in(h.home), state=HomePaths(h.home).mirror_state),
        data_cache=ContentCache(h.config.data_cache_in(h.home)),
        tracker=None,
        started_at=h.clock(),
        daemon_uid=0,
        schedules=service,
    )


def test_the_api_checks_the_wire_form_again_and_stores_the_schedule(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    h = make_engine(LAB)
    server = _api(h, _service(h))
    wire = pipeline_to_wire(_loaded(tmp_path / "p"))
    view = ok(server, ALICE, "schedule_add", pipeline=wire, source="p.yaml", every_s=3600)
    assert (view["kind"], view["spec_name"], view["last_firing"]) == (
        "pipeline",
        "nightly-retrain",
        None,
    )
    shown = ok(server, ALICE, "schedule_show", schedule="nightly-retrain")
    assert list(shown["pipeline"]["definition"]["steps"]) == ["prepare", "train", "evaluate"]
    fired = ok(server, ALICE, "schedule_run_now", schedule=view["id"])
    assert fired["firing"]["queued"] == f"p{fired['firing']['pipeline_id']}"
    assert fired["message"].endswith(f"pipeline p{fired['firing']['pipeline_id']} queued")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # A client that skipped its own checks: a cycle.
        (
            lambda w: w["definition"]["steps"]["prepare"].update(after=["evaluate"]),
            "a cycle",
        ),
        # A step's spec that its client did not send.
        (lambda w: w["specs"].pop("train"), "its spec was not sent"),
        # A priority above the member's range.
        (
            lambda w: w["specs"].update(
                prepare=w["specs"]["prepare"].replace("priority: 0", "priority: 1000")
            ),
            "priority",
        ),
    ],
)
def test_the_api_refuses_a_bad_pipeline_and_stores_nothing(
    make_engine: EngineFactory,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], object],
    message: str,
) -> None:
    h = make_engine(LAB)
    server = _api(h, _service(h))
    wire: dict[str, Any] = json.loads(json.dumps(pipeline_to_wire(_loaded(tmp_path / "p"))))
    change(wire)
    refused = error(server, ALICE, "schedule_add", pipeline=wire, source="p.yaml", every_s=3600)
    assert message in refused["message"], refused
    assert h.store.schedules(include_removed=True) == []
