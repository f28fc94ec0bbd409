"""Sweeps on the command line: `s7` wherever a run is acted on, `ls` with a sweep as one row that
fits 80 columns, `show s7`, what `submit` and `validate` say about a sweep. The daemon is faked:
these tests check what the CLI sends and how it prints the API's answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_fakes import RUN_ROW, FakeDaemon, answered_ok, fake_daemon, run_cli

from hpcops.cli import output

SWEEP_ROW: dict[str, Any] = {
    "type": "sweep",
    "id": "s7",
    "sweep_id": 7,
    "name": "resnet-lr",
    "experiment": "resnet",
    "owner": "alice",
    "state": "RUNNING",
    "kind": "grid",
    "n_points": 9,
    "counts": {"COMPLETED": 3, "FAILED": 1, "QUEUED": 2, "RUNNING": 3},
    "progress": {
        "queued": 2,
        "held": 0,
        "pending": 0,
        "running": 3,
        "done": 3,
        "failed": 1,
        "cancelled": 0,
    },
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "best": {"run_id": 16, "value": 0.93},
    "max_parallel": 4,
    "mlflow_run_id": "ab" * 16,
    "rerun_of": None,
    "created_at": "2026-01-02T03:04:05Z",
    "updated_at": "2026-01-02T03:04:05Z",
    "closed_at": None,
    "wait_reason": "point 7: sweep s7's max_parallel 4 reached, a wait reason that is long",
}


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    return fake_daemon(monkeypatch, default=answered_ok)


@pytest.mark.parametrize(
    ("argv", "sent"),
    [
        (("cancel", "s7"), [("cancel", {"run": "s7"})]),
        (("cancel", "12", "S8", "s9"), [("cancel", {"run": r}) for r in (12, "s8", "s9")]),
        (("hold", "s7"), [("hold", {"run": "s7"})]),
        (("release", "s7", "3"), [("release", {"run": "s7"}), ("release", {"run": 3})]),
        (("priority", "s7", "-5"), [("priority", {"run": "s7", "priority": -5})]),
        (("top", "s7"), [("top", {"run": "s7"})]),
        (("rerun", "s7"), [("rerun", {"run": "s7", "set": {}})]),
    ],
)
def test_a_sweep_id_goes_to_the_api_as_s_and_its_number(
    daemon: FakeDaemon, argv: tuple[str, ...], sent: list[tuple[str, dict[str, Any]]]
) -> None:
    result = run_cli(*argv)
    assert result.exit_code == 0, result.output
    assert daemon.calls == sent


@pytest.mark.parametrize("word", ["x7", "s0", "s", "7s", "s-1", "0"])
def test_a_bad_id_names_what_is_allowed(daemon: FakeDaemon, word: str) -> None:
    result = run_cli("cancel", word)
    assert result.exit_code == 2
    assert "a sweep id (s and a positive integer, e.g. s7)" in result.output or (
        "is not a run id" in result.output
    )
    assert daemon.calls == []


def test_ls_lists_a_sweep_once_in_a_table_of_its_own(daemon: FakeDaemon) -> None:
    ended = {**SWEEP_ROW}
    daemon.answers["list"] = lambda p: (
        [SWEEP_ROW, RUN_ROW] if "QUEUED" in p.get("states", []) else [ended]
    )
    result = run_cli("ls")
    assert result.exit_code == 0, result.output
    assert all(params["sweeps"] is True for _, params in daemon.calls)
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATE", "OWNER"] and lines[1].startswith("30 ")
    sweep_lines = [line for line in lines if line.startswith("s7 ")]
    assert len(sweep_lines) == 1
    assert "9 pts: 2 queued 3 running 3 done 1 failed" in sweep_lines[0]
    assert "val_accuracy=0.93 (max)" in sweep_lines[0]
    as_json = json.loads(run_cli("ls", "--json").output)
    assert [(r["type"], r["id"]) for r in as_json] == [("sweep", "s7"), ("run", 30)]


def test_ls_fits_80_columns_with_a_sweep(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "terminal_width", lambda: 80)
    long_name = {**SWEEP_ROW, "name": "a-rather-long-sweep-name-for-resnet", "owner": "alexandra"}
    daemon.answers["list"] = [long_name]
    result = run_cli("ls", "--all")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    # too wide for one line: the progress goes under its sweep, and the best stays whole
    assert lines[0].split() == ["SWEEP", "STATE", "OWNER", "NAME", "BEST", "WHY"]
    assert lines[1].startswith("s7     RUNNING  alexandra  a-rather-long")
    assert "val_accuracy=0.93 (max)" in lines[1]
    assert lines[2] == "       9 pts: 2 queued 3 running 3 done 1 failed"
    monkeypatch.setattr(output, "terminal_width", lambda: 120)
    daemon.answers["list"] = [SWEEP_ROW]
    wide = run_cli("ls", "--all").output.splitlines()
    assert len(wide) == 2 and "9 pts: 2 queued 3 running 3 done 1 failed" in wide[1]


def test_ls_points_asks_for_every_run(daemon: FakeDaemon) -> None:
    daemon.answers["list"] = []
    assert run_cli("ls", "--points", "--all").exit_code == 0
    assert daemon.calls == [("list", {"limit": None, "sweeps": False})]


def test_show_a_sweep_lists_its_points(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "terminal_width", lambda: 80)
    points = [
        {"index": 4, "run_id": 16, "state": "COMPLETED", "objective": 0.93, "params": {"lr": 0.1}},
        {"index": 0, "run_id": 12, "state": "FAILED", "objective": None, "params": {"lr": 0.3}},
    ]
    shown = {
        **SWEEP_ROW,
        "seed": None,
        "best": {"run_id": 16, "value": 0.93, "index": 4, "params": {"lr": 0.1}},
        "points": points,
        "mlflow_experiment_id": "3",
        "spec": "name: resnet-lr\n",
    }
    daemon.answers["show"] = shown
    result = run_cli("show", "s7")
    assert result.exit_code == 0, result.output
    assert daemon.calls == [("show", {"run": "s7"})]
    text = result.output
    assert "state:      RUNNING  — 9 pts: 2 queued 3 running 3 done 1 failed" in text
    assert "best:       0.93: point 4, run 16  lr=0.1" in text
    assert "parallel:   at most 4 points at once" in text
    rows = text.split("POINT")[1].splitlines()
    assert rows[0].split() == ["RUN", "STATE", "VAL_ACCURACY", "PARAMS"]
    assert rows[1].split() == ["4", "16", "COMPLETED", "0.93", "lr=0.1"]
    assert rows[2].split() == ["0", "12", "FAILED", "-", "lr=0.3"]
    assert json.loads(run_cli("show", "s7", "--json").output) == shown


SPEC = "name: grid\nexperiment: e\ncommand: 'true'\n"


def test_submit_names_the_sweep_and_json_has_its_runs(daemon: FakeDaemon, tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(SPEC)
    runs = [
        {"id": 12 + i, "name": f"grid[{i}]", "state": "QUEUED", "sweep": "s7", "sweep_index": i}
        for i in range(9)
    ]
    sweep = {"id": "s7", "sweep_id": 7, "name": "grid", "n_points": 9, "runs": list(range(12, 21))}
    daemon.answers["submit"] = {"runs": runs, "sweeps": [sweep]}
    result = run_cli("--home", str(tmp_path), "submit", str(path))
    assert result.exit_code == 0, result.output
    assert result.output == "queued sweep s7: 9 points (runs 12-20)\n"
    answer = json.loads(run_cli("--home", str(tmp_path), "submit", str(path), "--json").output)
    assert answer == {"type": "sweep", "state": "QUEUED", **sweep}
    single = {"id": 30, "name": "one", "state": "QUEUED", "sweep": None, "sweep_index": None}
    daemon.answers["submit"] = {"runs": [single, *runs], "sweeps": [sweep]}
    both = run_cli("--home", str(tmp_path), "submit", str(path), str(path))
    assert both.output == "30\tone\ns7\tsweep s7: 9 points (runs 12-20)\n"


def test_rerun_of_a_sweep_says_what_it_queued(daemon: FakeDaemon) -> None:
    daemon.answers["rerun"] = {
        "type": "sweep",
        "id": "s8",
        "sweep_id": 8,
        "n_points": 3,
        "runs": [21, 22, 23],
        "rerun_of": "s7",
    }
    result = run_cli("rerun", "s7")
    assert result.output == "queued sweep s8: 3 points (runs 21-23), a rerun of s7\n"


def test_validate_lists_a_sweeps_points_and_json_lists_them_all(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    points = [{"lr": 0.1 * i, "resources.mem": "4G", "flag": i % 2 == 0} for i in range(25)]
    path = tmp_path / "grid.yaml"
    # JSON is YAML 1.2: the list's floats reach the spec exactly as written.
    path.write_text(
        json.dumps(
            {"name": "grid", "experiment": "e", "command": "true", "sweep": {"list": points}}
        )
    )
    result = run_cli("validate", "--offline", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{path}: ok (grid): a sweep of 25 points"
    assert lines[1].split() == ["POINT", "LR", "RESOURCES.MEM", "FLAG"]
    assert lines[2].split() == ["0", "0.0", "4G", "true"]
    assert len(lines) == 2 + 20 + 1
    assert lines[-1] == "... and 5 more points (--json lists them all)"
    answer = json.loads(run_cli("validate", "--offline", "--json", str(path)).output)
    assert answer["sweep"]["n_points"] == 25 and answer["sweep"]["points"] == points
    assert daemon.calls == []


def test_validate_of_a_random_search_without_a_seed_says_when_its_points_are_drawn(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "rnd.yaml"
    path.write_text(
        "name: rnd\nexperiment: e\ncommand: 'true'\n"
        "sweep: {random: {samples: 4, space: {lr: {uniform: [0.0, 1.0]}}}}\n"
    )
    result = run_cli("validate", "--offline", str(path))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{path}: ok (rnd): a sweep of 4 points",
        "  points drawn when the sweep is queued (no seed given; the seed drawn is recorded)",
    ]


def test_wait_for_a_sweep_ends_with_its_derived_state(daemon: FakeDaemon) -> None:
    states = iter(["RUNNING", "FAILED"])
    daemon.answers["show"] = lambda p: {**SWEEP_ROW, "state": next(states)}
    result = run_cli("wait", "s7", "--interval", "0.2")
    assert result.exit_code == 1, result.output
    assert result.output == "sweep s7: FAILED\n"
    assert daemon.calls == [("show", {"run": "s7"})] * 2
