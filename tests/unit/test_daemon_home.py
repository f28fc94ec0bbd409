"""`daemon start` refuses a home on a network filesystem, where jobs could write the database
and SQLite's locking is unsafe; --allow-network-home overrides it knowingly."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcops import daemon
from hpcops.cli.main import cli
from hpcops.errors import ConfigError


def test_a_home_on_nfs_is_refused_with_the_reason_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "network_home", lambda home: "nfs4")
    with pytest.raises(ConfigError, match=r"is on nfs4, a network filesystem") as caught:
        daemon.check_home(tmp_path, allow_network_home=False)
    assert "--allow-network-home" in caught.value.message
    assert "/var/lib/hpcops" in caught.value.message
    daemon.check_home(tmp_path, allow_network_home=True)  # knowingly: no error


def test_daemon_start_exits_2_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("lab: t\n")
    monkeypatch.setattr(daemon, "network_home", lambda home: "lustre")
    result = CliRunner().invoke(cli, ["--home", str(home), "daemon", "start"])
    assert result.exit_code == 2, result.output
    assert "lustre, a network filesystem" in result.output
    assert sorted(p.name for p in home.iterdir()) == ["config.yaml"]


def test_a_local_home_passes(tmp_path: Path) -> None:
    daemon.check_home(tmp_path, allow_network_home=False)
