"""`hpcops schedule` with a pipeline (issue 15): `add` recognises a pipeline file and sends its
wire form (a bad one: exit 2, nothing sent); `ls` and `show` say that a schedule fires a
pipeline and which p<id> its firings queued. The daemon is faked, its answers built by the
API's own views; the request's params are checked as the daemon parses them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_fakes import fake_daemon, run_cli

from hpcops.api.params import ScheduleAddParams
from hpcops.api.views import firing_view, schedule_view
from hpcops.errors import InvalidInput
from hpcops.pipeline import pipeline_from_wire
from hpcops.store import Firing, Schedule

PIPELINE = """\
name: nightly-retrain
steps:
  prepare: {spec: prepare.yaml}
  evaluate: {spec: evaluate.yaml, after: [prepare]}
"""
SPEC = "name: {name}\nexperiment: e\ncommand: python {name}.py\n"


def _files(folder: Path, pipeline: str = PIPELINE) -> Path:
    for name in ("prepare", "evaluate"):
        (folder / f"{name}.yaml").write_text(SPEC.format(name=name))
    path = folder / "pipeline.yaml"
    path.write_text(pipeline)
    return path


def _schedule(kind: str = "pipeline") -> Schedule:
    return Schedule(
        id=3,
        name="nightly",
        owner="alice",
        owner_uid=1001,
        spec_yaml="name: nightly-retrain\n",
        spec_name="nightly-retrain" if kind == "pipeline" else "train",
        kind=kind,
        pipeline_json="{}" if kind == "pipeline" else None,
        cron="0 3 * * 1",
        timezone="UTC",
        catch_up="one",
        catch_up_grace_s=3600,
        created_at=1_795_400_000.0,
        updated_at=1_795_400_000.0,
    )


def _firing(pipeline_id: int | None, run_id: int | None = None) -> Firing:
    return Firing(
        id=9,
        schedule_id=3,
        scheduled_for=1_795_400_000.0,
        fired_at=1_795_400_000.0,
        kind="scheduled",
        actor="daemon",
        outcome="submitted",
        run_id=run_id,
        pipeline_id=pipeline_id,
    )


def _view(schedule: Schedule, firing: Firing | None) -> dict[str, Any]:
    # Through JSON, as the CLI receives it.
    last = (firing, "RUNNING") if firing is not None else None
    view = schedule_view(schedule, next_fire_at=None, problem=None, last_firing=last)
    return json.loads(json.dumps(view))  # type: ignore[no-any-return]


def test_add_sends_a_pipeline_in_its_wire_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = fake_daemon(monkeypatch)
    daemon.answers["schedule_add"] = _view(_schedule(), None)
    path = _files(tmp_path)
    result = run_cli("schedule", "add", str(path), "--cron", "0 3 * * 1")
    assert result.exit_code == 0, result.output
    assert "schedule 3 (nightly)" in result.output
    [(method, params)] = daemon.calls
    assert method == "schedule_add" and "yaml" not in params
    assert (params["source"], params["cron"]) == (str(path), "0 3 * * 1")
    # What the daemon reads back from it: the same pipeline, its steps in the file's order.
    parsed = ScheduleAddParams.parse(json.loads(json.dumps(params)))
    loaded = pipeline_from_wire(parsed.pipeline, parsed.source)
    assert list(loaded.steps) == ["prepare", "evaluate"]
    assert loaded.specs["evaluate"].name == "evaluate"


def test_add_of_a_bad_pipeline_exits_2_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = fake_daemon(monkeypatch)
    path = _files(tmp_path, PIPELINE.replace("after: [prepare]", "after: [prepar]"))
    result = run_cli("schedule", "add", str(path), "--every", "3600")
    assert result.exit_code == 2, result.output
    assert "steps.evaluate.after[0]" in result.output and "did you mean 'prepare'" in result.output
    assert daemon.calls == []


def test_add_of_a_spec_still_sends_its_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = fake_daemon(monkeypatch)
    daemon.answers["schedule_add"] = _view(_schedule("spec"), None)
    path = tmp_path / "train.yaml"
    path.write_text(SPEC.format(name="train"))
    assert run_cli("schedule", "add", str(path), "--every", "3600").exit_code == 0
    [(_, params)] = daemon.calls
    assert "pipeline" not in params and params["yaml"].startswith("name: train")


@pytest.mark.parametrize(
    "params",
    [
        {"source": "x.yaml"},
        {"source": "x.yaml", "yaml": "name: t", "pipeline": {}},
    ],
)
def test_the_daemon_takes_exactly_one_of_a_spec_and_a_pipeline(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=r"exactly one of params\.yaml"):
        ScheduleAddParams.parse(params)


def test_ls_says_a_schedule_fires_a_pipeline_and_which_it_queued_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daemon = fake_daemon(monkeypatch)
    daemon.answers["schedule_list"] = [
        _view(_schedule(), _firing(pipeline_id=4)),
        {**_view(_schedule("spec"), _firing(None, run_id=12)), "id": 5, "name": "weekly"},
    ]
    result = run_cli("schedule", "ls")
    assert result.exit_code == 0, result.output
    header, pipeline_row, spec_row = result.output.splitlines()[:3]
    assert "FIRES" in header
    assert "pipeline nightly-retrain" in pipeline_row and "submitted p4" in pipeline_row
    assert "spec train" in spec_row and "submitted run 12" in spec_row
    as_json = json.loads(run_cli("schedule", "ls", "--json").output)
    assert as_json[0]["kind"] == "pipeline"
    assert (as_json[0]["last_firing"]["pipeline_id"], as_json[0]["last_firing"]["queued"]) == (
        4,
        "p4",
    )


def test_show_lists_the_pipelines_its_firings_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = fake_daemon(monkeypatch)
    firing = _firing(pipeline_id=4)
    daemon.answers["schedule_show"] = {
        **_view(_schedule(), firing),
        "spec": "name: nightly-retrain\n",
        "firings": [json.loads(json.dumps(firing_view(firing, "RUNNING")))],
    }
    result = run_cli("schedule", "show", "nightly")
    assert result.exit_code == 0, result.output
    assert "(pipeline nightly-retrain)" in result.output
    assert "skipped while its pipeline has not ended" in result.output
    table = result.output[result.output.index("FIRING") :]
    assert "PIPELINE" in table.splitlines()[0]
    assert "p4" in table and "RUNNING" in table


def test_run_now_prints_the_pipeline_it_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = fake_daemon(monkeypatch)
    firing = json.loads(json.dumps(firing_view(_firing(pipeline_id=4), None)))
    daemon.answers["schedule_run_now"] = {"message": "queued", "firing": firing}
    result = run_cli("schedule", "run-now", "nightly")
    assert (result.exit_code, result.output.strip()) == (0, "p4")
