from __future__ import annotations

from pathlib import Path

import pytest

from hpcops.client.config import load_client_config
from hpcops.errors import ConfigError


def _write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    monkeypatch.setenv("HPCOPS_CONFIG", str(path))


def test_no_config_means_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCOPS_CONFIG", str(tmp_path / "absent.yaml"))
    assert load_client_config().remote(None) is None


def test_default_and_named_remotes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(
        tmp_path,
        monkeypatch,
        (
            "default_remote: lab\n"
            "remotes:\n"
            "  lab: {host: login.example.edu, command: /opt/venv/bin/hpcops, home: /scratch/h}\n"
            "  other: {host: alias2, command: [python3, -m, hpcops]}\n"
        ),
    )
    config = load_client_config()
    name, remote = config.remote(None) or ("", None)
    assert name == "lab" and remote is not None
    assert remote.command == ["/opt/venv/bin/hpcops"] and remote.home == "/scratch/h"
    assert config.remote("other") == ("other", config.remotes["other"])
    with pytest.raises(ConfigError, match=r"no remote 'nope'.*known: lab, other"):
        config.remote("nope")


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("remotes: {lab: {host: 'a b'}}", "remotes.lab.host"),
        ("remotes: {lab: {host: h, command: 'hpcops; rm -rf ~'}}", "remotes.lab.command"),
        ("remotes: {lab: {host: h, home: relative}}", "remotes.lab.home"),
        ("remotes: {lab: {host: h, port: 0}}", "remotes.lab.port"),
        ("remotes: {lab: {hots: h}}", "remotes.lab.hots"),
        ("remotes: {lab: {host: -oProxyCommand}}", "remotes.lab.host"),
        ("remotes: {lab: {host: h, command: -x}}", "the first word is the program"),
        ("remotes: {lab: {host: h, transport: ssh}}", "openssh, paramiko"),
        ("remotes: {lab: {port: 22}}", "remotes.lab.host: missing"),
        ("remotes: {lab: {host: h, connect_timeout_s: 0}}", "remotes.lab.connect_timeout_s"),
        ("remotes: {lab: {host: h, port: true}}", "remotes.lab.port"),
        ("default_remote: [a]", "default_remote"),
        ("remotes: [", "not valid YAML"),
    ],
)
def test_bad_client_config_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, phrase: str
) -> None:
    _write(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError) as info:
        load_client_config()
    assert phrase in str(info.value)


def test_transport_defaults_to_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, monkeypatch, "remotes: {a: {host: h}, b: {host: h, transport: openssh}}")
    config = load_client_config()
    assert config.remotes["a"].transport == "auto"
    assert config.remotes["b"].transport == "openssh"


def test_every_problem_is_named_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, monkeypatch, "remotes: {a: {host: 'a b', port: 0}, b: {hots: h}}")
    with pytest.raises(ConfigError) as info:
        load_client_config()
    for phrase in ("remotes.a.host", "remotes.a.port", "remotes.b.hots", "remotes.b.host"):
        assert phrase in str(info.value)
