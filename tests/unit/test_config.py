from __future__ import annotations

from pathlib import Path

import pytest

from hpcops.config import Config, load_config, parse_config
from hpcops.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid_and_documents_every_setting() -> None:
    config = load_config(REPO / "configs" / "hpcops.yaml", Path("/nonexistent"))
    assert config.slurm.account == "lab"
    text = (REPO / "configs" / "hpcops.yaml").read_text()
    for name in list(Config.model_fields) + list(
        Config.model_fields["slurm"].annotation.model_fields
    ):  # type: ignore[union-attr]
        assert name in text, f"configs/hpcops.yaml does not mention {name}"


def test_missing_default_config_means_defaults(tmp_path: Path) -> None:
    assert load_config(None, tmp_path) == Config()


def test_missing_named_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml", tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_activ: 3", "max_activ: unknown setting; did you mean 'max_active'?"),
        ("slurm: {acount: lab}", "slurm.acount: unknown setting; did you mean 'account'?"),
        ("max_active: 0", "max_active: Input should be greater than or equal to 1"),
        ("run_root: relative/path", "run_root: Value error, must be an absolute path"),
        ("run_root: '/scratch/my lab'", "may hold only letters"),
        ("slurm: {account: 'lab\nx'}", "slurm.account"),
        ("- a list", "the top level must be a mapping"),
        ("slurm: {transport: sftp}", "slurm.transport: Input should be 'local' or 'ssh'"),
        (
            "slurm: {transport: ssh}",
            "slurm: Value error, transport is ssh but slurm.ssh is missing",
        ),
        ("slurm: {ssh: {host: login}}", "slurm.ssh is set but transport is local"),
        (
            "slurm: {transport: ssh, ssh: {host: login}}",
            "run_root is required with slurm.transport: ssh",
        ),
        ("slurm: {transport: ssh, ssh: {hots: x}}", "slurm.ssh.hots: unknown setting; did you"),
        ("slurm: {transport: ssh, ssh: {host: 'a;b'}}", "slurm.ssh.host: Value error, must be"),
        ("slurm: {transport: ssh, ssh: {host: a, user: 'Bad User'}}", "slurm.ssh.user"),
        ("slurm: {transport: ssh, ssh: {host: a, known_hosts: kh}}", "slurm.ssh.known_hosts"),
        (
            "slurm: {transport: ssh, ssh: {host: a, min_reconnect_interval_s: 0.1}}",
            "slurm.ssh.min_reconnect_interval_s: Input should be greater than or equal to 1",
        ),
        ("a: [unclosed", "not valid YAML"),
    ],
)
def test_bad_config_names_the_setting(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("cfg.yaml")


def test_ssh_transport_config() -> None:
    ssh = "slurm: {transport: ssh, ssh: {host: login.example.edu, user: labsvc, port: 2222}}\n"
    with pytest.raises(ConfigError, match=r"tracking does not work yet with a daemon off"):
        parse_config("run_root: /scratch/lab/runs\n" + ssh, "cfg.yaml")
    config = parse_config(
        "run_root: /scratch/lab/runs\n" + ssh + "tracking: {enabled: false}", "cfg.yaml"
    )
    assert config.slurm.ssh is not None
    assert (config.slurm.ssh.host, config.slurm.ssh.port) == ("login.example.edu", 2222)
    assert config.slurm.ssh.min_reconnect_interval_s == 60.0
