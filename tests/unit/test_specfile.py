"""The CLI's quick path for a spec (issue 16): the file's text and its folder, sent for the
daemon to anchor and validate. What the daemon reads from it must be what the full path reads
from the file, a spec the quick path cannot take goes the full path, with its messages, and a spec
the daemon refuses is named in the full path's words."""

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


def test_the_daemon_names_every_bad_spec_in_the_full_paths_words() -> None:
    """The quick path prints the daemon's refusal as it is (asked once), so for every malformed
    spec the project keeps, what the daemon says of the file's text is what the full path says
    of the file."""
    from hpcops.api.handlers.queue import parse_file_text
    from hpcops.api.params import SubmitParams
    from hpcops.errors import NeedsFullPath

    compared = []
    for path in sorted(BAD_SPECS.iterdir()):
        item = spec_file_item(path)
        if item is None:
            continue  # the full path reads it: nothing to compare
        with pytest.raises(InvalidInput) as local:
            load_spec_file(path)
        with pytest.raises(InvalidInput) as daemon:
            parse_file_text(SubmitParams.parse({"specs": [item]}).specs[0])
        if isinstance(daemon.value, NeedsFullPath):
            continue
        assert daemon.value.message == local.value.message, path.name
        compared.append(path.name)
    assert len(compared) > 50, compared


def test_a_spec_the_daemon_refuses_is_printed_as_it_says_and_asked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daemon = fake_daemon(monkeypatch)
    path = BAD_SPECS / "unknown_key.yaml"
    words = f"{path}: invalid spec\n  the daemon's words\nnothing was queued"
    daemon.answers["submit"] = InvalidInput(words)
    result = run_cli("submit", str(path))
    assert result.exit_code == 2
    assert result.output == f"hpcops: {words}\n"
    assert [m for m, _ in daemon.calls] == ["submit"], "a refusal is not asked again"


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
