"""Pipelines on the command line: `submit` and `validate` of a pipeline file (configs/examples/
pipeline/), `p3` wherever a run is acted on, `rerun p3.train --downstream`, `ls` with a pipeline
as one row that fits the terminal, and `show p3` drawing the steps. The daemon is faked: these
tests check what the CLI sends and how it prints the API's answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cli_fakes import RUN_ROW, FakeDaemon, answered_ok, fake_daemon, run_cli

from hpcops.cli import output
from hpcops.pipeline import pipeline_from_wire

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "examples" / "pipeline"

QUEUED: dict[str, Any] = {
    "type": "pipeline",
    "id": "p3",
    "pipeline_id": 3,
    "name": "digits-retrain",
    "state": "QUEUED",
    "steps": [
        {"name": "prepare", "kind": "run", "run_id": 12, "sweep": None, "runs": [12]},
        {"name": "train", "kind": "sweep", "run_id": None, "sweep": "s4", "runs": [13, 14, 15, 16]},
        {"name": "evaluate", "kind": "run", "run_id": 17, "sweep": None, "runs": [17]},
        {"name": "promote", "kind": "register", "run_id": None, "sweep": None, "runs": []},
    ],
}


def _step(name: str, kind: str, state: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "state": state, "run_id": None, "sweep": None, **more}


ROW: dict[str, Any] = {
    "type": "pipeline",
    "id": "p3",
    "pipeline_id": 3,
    "name": "digits-retrain",
    "experiment": "digits-pipeline",
    "owner": "ana",
    "state": "RUNNING",
    "n_steps": 4,
    "steps": [
        _step("prepare", "run", "COMPLETED", run_id=12),
        _step("train", "sweep", "RUNNING", sweep="s4"),
        _step("evaluate", "run", "QUEUED", run_id=17),
        _step("promote", "register", "QUEUED"),
    ],
    "outcome": None,
    "schedule_id": None,
    "firing_id": None,
    "mlflow_run_id": None,
    "created_at": "2026-01-02T03:04:05Z",
    "updated_at": "2026-01-02T03:04:05Z",
    "ended_at": None,
    "wait_reason": "train: lab CPU quota full",
}


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    return fake_daemon(monkeypatch, default=answered_ok)


# --- submit and validate -------------------------------------------------------------------


def test_submit_a_pipeline_sends_it_checked_and_says_each_steps_runs(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    daemon.answers["submit_pipeline"] = QUEUED
    path = EXAMPLE / "pipeline.yaml"
    result = run_cli("--home", str(tmp_path), "submit", str(path))
    assert result.exit_code == 0, result.output
    [(method, params)] = daemon.calls
    assert method == "submit_pipeline" and params["code"] == {}, "the example ships no code"
    sent = pipeline_from_wire(params["pipeline"])  # what the daemon checks again
    assert sent.name == "digits-retrain" and list(sent.steps) == list(QUEUED_STEPS)
    assert sent.specs["train"].sweep is not None and sent.source == str(path)
    lines = result.output.splitlines()
    assert lines[0] == "queued pipeline p3: digits-retrain, 4 steps"
    assert lines[1].split() == ["prepare", "run", "run", "12"]
    assert lines[2].split() == ["train", "sweep", "sweep", "s4", "(runs", "13-16)"]
    assert lines[4].split()[:3] == ["promote", "register", "no"]
    answer = json.loads(run_cli("--home", str(tmp_path), "submit", str(path), "--json").output)
    assert answer == QUEUED


QUEUED_STEPS = ("prepare", "train", "evaluate", "promote")


def test_a_bad_pipeline_exits_2_with_its_problems_and_sends_nothing(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    folder = tmp_path / "pipe"
    shutil.copytree(EXAMPLE, folder)
    (folder / "sweep.yaml").unlink()
    result = run_cli("--home", str(tmp_path), "submit", str(folder / "pipeline.yaml"))
    assert result.exit_code == 2, result.output
    assert "invalid spec" in result.output and "steps.train.spec: sweep.yaml" in result.output
    assert result.output.rstrip().endswith("nothing was queued")
    both = run_cli("--home", str(tmp_path), "submit", str(EXAMPLE / "pipeline.yaml"), "x.yaml")
    assert both.exit_code == 2 and "is a pipeline: submit it on its own" in both.output
    assert daemon.calls == []


def test_validate_a_pipeline_lists_its_steps_in_order(daemon: FakeDaemon, tmp_path: Path) -> None:
    path = EXAMPLE / "pipeline.yaml"
    result = run_cli("validate", "--offline", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{path}: ok (pipeline digits-retrain): 4 steps"
    assert lines[1].split() == ["STEP", "KIND", "SPEC", "AFTER", "INPUTS"]
    assert lines[3].split() == ["train", "sweep", "of", "4", "points", "sweep.yaml", "prepare"]
    assert lines[4].split()[-1] == "candidate=train.best"
    answer = json.loads(run_cli("validate", "--offline", "--json", str(path)).output)
    assert answer["type"] == "pipeline" and answer["valid"] is True
    assert [s["kind"] for s in answer["steps"]] == ["run", "sweep", "run", "register"]
    assert daemon.calls == []
    # with a daemon: each spec step is checked against the cluster, as a spec is
    daemon.answers["validate"] = {"valid": True}
    assert run_cli("validate", str(path)).exit_code == 0
    assert [p["source"] for _, p in daemon.calls] == [f"{path}, step {s}" for s in QUEUED_STEPS[:3]]
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nsteps: {a: {spec: a.yaml, after: [b]}}\n")
    refused = run_cli("validate", "--offline", str(bad))
    assert refused.exit_code == 2 and "steps.a.after[0]: no step 'b'" in refused.output


# --- ids and requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "sent"),
    [
        (("cancel", "p3"), [("cancel", {"run": "p3"})]),
        (("cancel", "12", "P4", "s9"), [("cancel", {"run": r}) for r in (12, "p4", "s9")]),
        (("hold", "p3"), [("hold", {"run": "p3"})]),
        (("release", "p3"), [("release", {"run": "p3"})]),
        (("priority", "p3", "-5"), [("priority", {"run": "p3", "priority": -5})]),
        (("top", "p3"), [("top", {"run": "p3"})]),
        (
            ("rerun", "p3.train", "--downstream"),
            [("rerun_step", {"pipeline": "p3", "step": "train", "downstream": True})],
        ),
        (
            ("rerun", "P3.train.v2"),
            [("rerun_step", {"pipeline": "p3", "step": "train.v2", "downstream": False})],
        ),
    ],
)
def test_a_pipeline_id_goes_to_the_api_as_p_and_its_number(
    daemon: FakeDaemon, argv: tuple[str, ...], sent: list[tuple[str, dict[str, Any]]]
) -> None:
    result = run_cli(*argv)
    assert result.exit_code == 0, result.output
    assert daemon.calls == sent


@pytest.mark.parametrize("word", ["p0", "p", "3p", "p-1", "pipe3"])
def test_a_bad_id_names_the_pipeline_form_too(daemon: FakeDaemon, word: str) -> None:
    result = run_cli("hold", word)
    assert result.exit_code == 2
    assert "nor a pipeline id (p and a positive integer, e.g. p3)" in result.output
    assert daemon.calls == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("rerun", "p3"), "p3 is a pipeline: name the step to run again"),
        (("rerun", "12", "--downstream"), "--downstream goes with a pipeline's step"),
        (("rerun", "p3.train", "--set", "params.lr=1"), "--set changes one run's spec"),
    ],
)
def test_rerun_of_a_pipeline_names_its_step(
    daemon: FakeDaemon, argv: tuple[str, ...], message: str
) -> None:
    result = run_cli(*argv)
    assert result.exit_code == 2 and message in result.output, result.output
    assert daemon.calls == []


def test_rerun_of_a_step_prints_what_it_queued(daemon: FakeDaemon) -> None:
    daemon.answers["rerun_step"] = {"message": "pipeline p3: train, evaluate queued again"}
    assert run_cli("rerun", "p3.train").output == "pipeline p3: train, evaluate queued again\n"


def test_wait_for_a_pipeline_ends_with_its_state(daemon: FakeDaemon) -> None:
    daemon.answers["show"] = {**ROW, "state": "COMPLETED"}
    result = run_cli("wait", "p3")
    assert result.exit_code == 0 and result.output == "pipeline p3: COMPLETED\n"


# --- ls and show ---------------------------------------------------------------------------


def test_ls_lists_a_pipeline_once_with_its_steps_states(daemon: FakeDaemon) -> None:
    run = {**RUN_ROW, "wait_reason": None}
    daemon.answers["list"] = lambda p: [ROW, run] if "QUEUED" in p.get("states", []) else [ROW]
    result = run_cli("ls")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("30 ")
    [row] = [line for line in lines if line.startswith("p3 ")]
    assert row.split()[:4] == ["p3", "RUNNING", "ana", "digits-retrain"]
    assert "prepare✓ train▶ evaluate· promote·" in row
    headers = ["PIPELINE", "STATE", "OWNER", "NAME", "STEPS", "WHY"]
    assert lines[lines.index(row) - 1].split() == headers
    as_json = json.loads(run_cli("ls", "--json").output)
    assert [(r["type"], r["id"]) for r in as_json] == [("pipeline", "p3"), ("run", 30)]
    assert as_json[0]["steps"] == ROW["steps"]


def test_ls_fits_80_columns_with_a_pipeline(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "terminal_width", lambda: 80)
    many = [_step(f"step-{i:02d}", "run", "COMPLETED" if i < 5 else "QUEUED") for i in range(12)]
    daemon.answers["list"] = [ROW, {**ROW, "id": "p4", "steps": many}]
    result = run_cli("ls", "--all")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    # too wide: the steps go under their pipeline, counted by state when even that is too long
    assert lines[0].split() == ["PIPELINE", "STATE", "OWNER", "NAME", "WHY"]
    assert lines[2] == "          prepare✓ train▶ evaluate· promote·"
    assert lines[4] == "          12 steps: 5✓ 7·"


SHOWN: dict[str, Any] = {
    **ROW,
    "state": "FAILED",
    "source": "pipeline.yaml",
    "mlflow_experiment_id": None,
    "closed_at": None,
    "steps": [
        _step("prepare", "run", "COMPLETED", run_id=12, after=[], inputs={}),
        _step(
            "train",
            "sweep",
            "FAILED",
            sweep="s4",
            after=["prepare"],
            inputs={},
            n_points=4,
            progress={"failed": 4},
            objective={"metric": "accuracy", "mode": "max"},
            best=None,
            reason="point 0: exit code 1",
        ),
        _step(
            "evaluate",
            "run",
            "CANCELLED",
            run_id=17,
            after=["train", "prepare"],
            inputs={"candidate": "train.best"},
            reason="waits for train, which FAILED",
        ),
        _step(
            "promote",
            "register",
            "COMPLETED",
            after=["evaluate"],
            inputs={},
            register={
                "model": "evaluate",
                "name": "digits-classifier",
                "alias": "champion",
                "artifact_path": "model",
                "if_better": {"metric": "accuracy", "mode": "max"},
            },
            model_run_id=17,
            result={
                "model_name": "digits-classifier",
                "version": "3",
                "alias": "champion",
                "moved": True,
                "margin": 0.02,
                "holder_version": "2",
            },
        ),
    ],
}


def test_show_a_pipeline_draws_its_steps_under_what_they_wait_for(daemon: FakeDaemon) -> None:
    daemon.answers["show"] = SHOWN
    result = run_cli("show", "p3")
    assert result.exit_code == 0, result.output
    assert daemon.calls == [("show", {"run": "p3"})]
    text = result.output
    assert "pipeline:   p3  digits-retrain  (experiment digits-pipeline)" in text
    graph = text.split("\n\n", 1)[1].splitlines()
    assert graph[0] == "✓ prepare  [run]  COMPLETED  run 12"
    assert graph[1] == "└─✗ train  [sweep]  FAILED  sweep s4: 4 pts: 4 failed"
    assert graph[2] == "    reason: point 0: exit code 1"
    assert graph[3] == "    └─⊘ evaluate  [run]  CANCELLED  run 17"
    assert graph[4:7] == [
        "        after train, prepare",
        "        inputs candidate=train.best",
        "        reason: waits for train, which FAILED",
    ]
    assert graph[7] == "        └─✓ promote  [register]  COMPLETED  model digits-classifier, " + (
        "alias champion"
    )
    assert "registers evaluate's model (run 17); the alias moves only if its accuracy (max)" in (
        text
    )
    assert "result: version 3 of digits-classifier; alias champion moved to it (margin +0.02 " + (
        "over version 2)"
    ) in " ".join(line.strip() for line in graph)
    assert json.loads(run_cli("show", "p3", "--json").output) == SHOWN
