"""Bad input through the real CLI and daemon: a clear message naming the field, exit status 2, and
nothing queued. The parse-level expectations for each file live in tests/unit/test_spec.py; here
the whole path is exercised, including the checks only the cluster can answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Daemon, write_spec

BAD_SPECS = Path(__file__).parents[1] / "fixtures" / "bad_specs"


def _queue(daemon: Daemon) -> list[dict[str, object]]:
    return daemon.json("ls", "--all")  # type: ignore[no-any-return]


def test_every_malformed_spec_is_refused_with_exit_2(daemon: Daemon, tmp_path: Path) -> None:
    files = sorted(BAD_SPECS.iterdir())
    assert len(files) >= 20
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(
        b"name: x\nexperiment: e\ncommand: |\n" + b"  echo\n" * (10 * 1024 * 1024 // 7)
    )
    before = _queue(daemon)
    for path in [*files, huge]:
        proc = daemon.cli("submit", str(path))
        assert proc.returncode == 2, f"{path.name}: exit {proc.returncode}\n{proc.stderr}"
        assert proc.stderr.startswith("hpcops: "), path.name
        assert "invalid spec" in proc.stderr or "spec" in proc.stderr, (path.name, proc.stderr)
        assert "nothing was queued" in proc.stderr, path.name
        assert "Traceback" not in proc.stderr, path.name
    assert _queue(daemon) == before


def test_one_bad_spec_in_a_batch_queues_none(daemon: Daemon, tmp_path: Path) -> None:
    good = write_spec(tmp_path, "good", "true")
    proc = daemon.cli("submit", str(good), str(BAD_SPECS / "unknown_key.yaml"))
    assert proc.returncode == 2
    assert _queue(daemon) == []


@pytest.mark.parametrize(
    ("resources", "field", "phrase"),
    [
        (
            {"time": "03:00:00"},
            "resources.time",
            "over the time limit of partition 'cpu' (02:00:00)",
        ),
        ({"partition": "nosuch"}, "resources.partition", "no partition 'nosuch'"),
    ],
)
def test_cluster_checks_at_submit(
    daemon: Daemon, tmp_path: Path, resources: dict[str, str], field: str, phrase: str
) -> None:
    spec = write_spec(tmp_path, "limits", "true", resources=resources)
    proc = daemon.cli("submit", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr and phrase in proc.stderr, proc.stderr
    assert _queue(daemon) == []
    # validate asks the daemon too, so the same mistake is caught before submitting
    proc = daemon.cli("validate", str(spec))
    assert proc.returncode == 2 and phrase in proc.stderr


def test_bad_arguments_and_requests(daemon: Daemon) -> None:
    assert daemon.cli("show", "999").returncode == 4
    assert daemon.cli("show", "abc").returncode == 2
    assert daemon.cli("ls", "--state", "BOGUS").returncode == 2
    assert daemon.cli("cancel", "999").returncode == 4
    assert daemon.cli("submit", "/nonexistent/spec.yaml").returncode == 2
    # A raw request with garbage params is refused by the daemon itself, not only by the CLI.
    from hpcops.client.client import Client
    from hpcops.errors import InvalidInput, ProtocolError

    with Client(daemon.home / "hpcops.sock") as client:
        with pytest.raises(InvalidInput):
            client.call("show", run="1; DROP TABLE run")
        with pytest.raises(InvalidInput):
            client.call("submit", specs="not a list")
        with pytest.raises(ProtocolError, match="unknown method"):
            client.call("drop_everything")
    assert json.loads(daemon.cli("ls", "--all", "--json").stdout) == []


def test_no_daemon_is_exit_3(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "hpcops", "--home", str(tmp_path), "ls"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert "hpcops daemon start" in proc.stderr
