"""The CLI's quick path for a spec (issue 16): the file's text and its folder, sent for the
daemon to anchor and validate. What the daemon reads from it must be what the full path reads
from the file, and a spec the quick path cannot take goes the full path, with its messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_fakes import fake_daemon, run_cli

from hpcops.errors import InvalidInput
from hpcops.spec import load_spec_file, parse_spec
from hpcops.specfile import spec_file_item

BAD_SPECS = Path(__file__).parents[1] / "fixtures" / "bad_specs"

SPECS = {
    "no_workdir": "name: a\nexperiment: e\ncommand: python train.py\n",
    "relative": "name: b\nexperiment: e\ncommand: python train.py\nworkdir: src/../run\n",
    "absolute": "name: c\nexperiment: e\ncommand: python train.py\nworkdir: /srv/x\n",
    "yaml12": "name: d\nexperiment: e\ncommand: 'true'\nresources: {time: 1:30:00}\n"
    "params: {on: on, n: 010, day: 2024-01-01}\n",
    "sweep": "name: s\nexperiment: e\ncommand: python train.py --lr {{ params.lr }}\n"
    "sweep: {grid: {lr: [0.1, 0.01]}}\n",
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_daemon_reads_what_the_full_path_reads(tmp_path: Path, name: str) -> None:
    path = tmp_path / "specs" / f"{name}.yaml"
    path.parent.mkdir()
    path.write_text(SPECS[name])
    item = spec_file_item(path)
    assert item is not None and item["base_dir"] == str(path.parent)
    assert item["yaml"] == SPECS[name], "the text as it is"
    assert parse_spec(item["yaml"], str(path), base_dir=Path(item["base_dir"])) == load_spec_file(
        path
    )


@pytest.mark.parametrize(
    "content",
    [
        "name: a\nexperiment: e\ncommand: x\ncode: {repo: ., commit: HEAD}\n",  # code to ship
        "name: a\nexperiment: e\ncommand: x\nschedule: {cron: '0 3 * * 1'}\n",  # a note
        "name: p\nsteps: {train: {spec: train.yaml}}\n",  # a pipeline
        "name: a\n" + "#" * (1024 * 1024) + "\n",  # too big
    ],
)
def test_what_the_quick_path_leaves_to_the_full_one(tmp_path: Path, content: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(content)
    assert spec_file_item(path) is None
    assert spec_file_item(tmp_path / "missing.yaml") is None
    path.write_bytes(b"name: \xff\n")  # not UTF-8
    assert spec_file_item(path) is None


def test_a_spec_the_daemon_refuses_gets_the_full_paths_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daemon = fake_daemon(monkeypatch)
    daemon.answers["submit"] = InvalidInput("the daemon's words")
    path = BAD_SPECS / "unknown_key.yaml"
    result = run_cli("submit", str(path))
    assert result.exit_code == 2
    assert "nothing was queued" in result.output
    assert str(path) in result.output
    assert [m for m, _ in daemon.calls] == ["submit"], "the full path refused it before sending"


def test_a_quick_submit_prints_as_the_full_path_did(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    daemon = fake_daemon(monkeypatch)
    daemon.answers["submit"] = {"runs": [{"id": 7, "name": "a", "state": "QUEUED"}]}
    path = tmp_path / "a.yaml"
    path.write_text(SPECS["no_workdir"])
    result = run_cli("submit", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"type": "run", "id": 7, "name": "a", "state": "QUEUED"}
    [(method, params)] = daemon.calls
    assert method == "submit" and params["specs"][0]["source"] == str(path)
