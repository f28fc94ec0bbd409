from __future__ import annotations

from pathlib import Path

import pytest

from hpcops.config import Config, load_config, parse_config
from hpcops.errors import ConfigError
from hpcops.spec import parse_spec

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
        ("retry: {keep_plac: true}", "retry.keep_plac: unknown setting; did you mean 'keep_place'"),
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


# ─── the one YAML reader ───────────────────────────────────────────────────────────────────────

SPEC_YAML = "name: mnist-baseline\nexperiment: mnist\ncommand: python train.py\n"


@pytest.mark.parametrize(
    "text",
    ["data: {staging_job: {time: 1:30:00}}", "data:\n  staging_job:\n    time: 1:30:00\n"],
)
def test_a_config_reads_a_time_as_a_spec_does(text: str) -> None:
    # Read with yaml.safe_load (YAML 1.1), 1:30:00 was the base-60 integer 5400 and the config
    # refused it ("Input should be a valid string") while a spec took it as 90 minutes.
    config = parse_config(text, "cfg.yaml")
    spec = parse_spec(SPEC_YAML + "resources: {time: 1:30:00}\n", "spec.yaml")
    assert config.data.staging_job.time == spec.resources.time == "1:30:00"


def test_staging_job_mem_and_time_may_be_yaml_integers_as_in_a_spec() -> None:
    config = parse_config("data: {staging_job: {time: 90, mem: 4096}}", "cfg.yaml")
    assert (config.data.staging_job.time, config.data.staging_job.mem) == ("90", "4096")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "quotas:\n  users:\n    ana: &std {jobs: 2}\n    bob: *std\n",
            "cfg.yaml: invalid config\n  quotas.users.ana: YAML anchor '&std' at line 3, "
            "column 10: anchors and aliases are not allowed in a config; write each value out "
            "in full",
        ),
        (
            "max_active: 3\nmax_active: 4\n",
            "cfg.yaml: invalid config\n  max_active: duplicate key 'max_active' (lines 1 and 2); "
            "YAML would silently keep only the last value: remove one",
        ),
        ("lab: !!python/name:os.system x\n", "tags are not allowed in a config"),
        ("lab: x\n---\nlab: y\n", "a config file holds one document"),
        ("a: [unclosed", "cfg.yaml: not valid YAML at line 2, column 1: did not find expected"),
    ],
)
def test_a_config_is_plain_data(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml")
    assert expected in str(info.value)


def test_a_huge_config_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"# " + b"x" * (2 * 1024 * 1024))
    with pytest.raises(ConfigError, match=r"the config is 2097154 bytes; the limit is 1048576"):
        load_config(path, tmp_path)


def test_an_empty_config_means_defaults() -> None:
    assert parse_config("# nothing yet\n", "cfg.yaml") == Config()


# ─── one Slurm-name rule ───────────────────────────────────────────────────────────────────────


def test_slurm_names_follow_the_rule_spec_and_render_use() -> None:
    # slurm.conf(5) sets no rule on a partition's first character: '_debug' is a partition a lab
    # may have, and a spec could always name it; the config refused it as default_partition.
    config = parse_config(
        "slurm: {default_partition: _debug, account: _lab}\n"
        "data: {staging_job: {partition: _stage, qos: _low}}",
        "cfg.yaml",
    )
    assert config.slurm.default_partition == "_debug"
    assert parse_spec(SPEC_YAML + "resources: {partition: _debug}\n", "s").resources.partition
    for bad in ("-x", ".x", "a b", "x" * 65):
        with pytest.raises(ConfigError, match=r"must match \[A-Za-z0-9_\]"):
            parse_config(f"slurm: {{default_partition: '{bad}'}}", "cfg.yaml")


def test_a_retry_s_next_attempt_queues_at_the_back_unless_the_lab_says_keep_place() -> None:
    assert Config().retry.keep_place is False
    assert parse_config("retry: {keep_place: true}", "cfg.yaml").retry.keep_place is True
