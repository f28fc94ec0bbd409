"""A job's environment is explicit (issue 12, item 4): `#SBATCH --export=NONE`, then the script
exports the daemon's allow-listed variables (config jobs.env_passthrough) and what hpcops sets.
Nothing else of the daemon's environment, and never a secret-looking name, reaches a job."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hpcops.config import Config, parse_config
from hpcops.config_sections import DEFAULT_ENV_PASSTHROUGH, passthrough_problem
from hpcops.errors import ConfigError, SpecError
from hpcops.jobcontext import Placement, build_job_context
from hpcops.render import JobContext, StagingJob, render_script, render_staging_script
from hpcops.rundir import RunDir
from hpcops.spec import Spec, parse_spec

# The daemon's environment as a lab might start it: secrets beside the few harmless variables.
DAEMON_ENV = {
    "PATH": "/opt/lab/venv/bin:/usr/bin:/bin",
    "LANG": "en_US.UTF-8",
    "TZ": "Europe/Berlin",
    "MLFLOW_TRACKING_USERNAME": "daemon",
    "MLFLOW_TRACKING_PASSWORD": "s3cret-mlflow",
    "MLFLOW_TRACKING_TOKEN": "s3cret-token",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "s3cret-aws",
    "SSH_AUTH_SOCK": "/tmp/ssh-agent.sock",
    "GITHUB_TOKEN": "s3cret-gh",
    "DVC_REMOTE_PASSWORD": "s3cret-dvc",
    "HOME": "/home/labsvc",
    "DAEMON_ONLY": "not-listed",
}
SECRET_VALUES = [v for k, v in DAEMON_ENV.items() if "s3cret" in v or k == "AWS_ACCESS_KEY_ID"]
SPEC_WITH_DATA = """\
name: mnist
experiment: mnist
command: python train.py
code: {repo: /home/ana/mnist, commit: 0123456789abcdef0123456789abcdef01234567}
data: [{path: data/mnist}]
"""


def _context(
    config: Config, spec: Spec, *, run_id: int = 42, environ: dict[str, str] | None = None
) -> JobContext:
    placement = Placement(
        run_root=Path("/scratch/lab/runs"),
        mirror_objects="/scratch/lab/code/objects",
        staging_python="/opt/lab/venv/bin/python",
    )
    environ = DAEMON_ENV if environ is None else environ
    return build_job_context(spec, config, placement, run_id, f"{run_id:016x}", environ=environ)


def _exported(script: str) -> dict[str, str]:
    return dict(re.findall(r"^export ([A-Za-z_][A-Za-z0-9_]*)=(.*)$", script, flags=re.M))


def _header(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


# ─── the run's script ──────────────────────────────────────────────────────────────────────────


def test_the_job_gets_none_of_the_daemons_environment() -> None:
    spec = parse_spec("name: t\nexperiment: e\ncommand: python train.py\n", "t")
    script = render_script(spec, _context(Config(), spec))
    assert _header(script).count("#SBATCH --export=NONE") == 1
    assert not [line for line in _header(script) if "export" in line and line.endswith("ALL")]


def test_the_script_exports_only_allow_listed_values_then_hpcops_own() -> None:
    spec = parse_spec("name: t\nexperiment: e\ncommand: python train.py\nenv: {LC_ALL: C}\n", "t")
    script = render_script(spec, _context(Config(), spec))
    exported = _exported(script)
    assert exported["PATH"] == "/opt/lab/venv/bin:/usr/bin:/bin"
    assert exported["LANG"] == "en_US.UTF-8"
    assert exported["TZ"] == "Europe/Berlin"
    assert exported["LC_ALL"] == "C"  # the spec's env, after the allow-list, wins
    assert exported["SLURM_EXPORT_ENV"] == "ALL"  # srun's tasks get the script's environment
    daemon_names = {n for n in exported if n in DAEMON_ENV}
    assert daemon_names == {"PATH", "LANG", "TZ"}
    names = list(exported)
    assert names.index("PATH") < names.index("HPCOPS_RUN_ID") < names.index("LC_ALL")
    for value in [*SECRET_VALUES, "not-listed", "/tmp/ssh-agent.sock"]:
        assert value not in script


def test_every_job_gets_its_attempt_and_the_runs_checkpoint_directory() -> None:
    # with or without checkpoint:, so a command can always resume; build_job_context is the
    # daemon's and `hpcops render`'s one builder, and the engine passes the attempt it starts.
    placement = Placement(
        Path("/scratch/lab/runs"), "/scratch/lab/code/objects", "/usr/bin/python3"
    )
    for text in ("", "resources: {time: '02:00:00'}\ncheckpoint: {before_s: 600}\n"):
        spec = parse_spec("name: t\nexperiment: e\ncommand: python train.py\n" + text, "t")
        first = build_job_context(spec, Config(), placement, 42, "0" * 16, environ={})
        assert first.attempt == 1
        exported = _exported(render_script(spec, first))
        assert exported["HPCOPS_ATTEMPT"] == "1"
        assert exported["HPCOPS_CHECKPOINT_DIR"] == "/scratch/lab/runs/run-000042/checkpoint"
        third = build_job_context(spec, Config(), placement, 42, "1" * 16, environ={}, attempt=3)
        exported = _exported(render_script(spec, third))
        assert exported["HPCOPS_ATTEMPT"] == "3"
        assert exported["HPCOPS_CHECKPOINT_DIR"] == "/scratch/lab/runs/run-000042/checkpoint"
    with pytest.raises(ValueError, match="attempt"):
        build_job_context(spec, Config(), placement, 42, "0" * 16, environ={}, attempt=0)


def test_a_spec_cannot_set_the_attempt_or_the_checkpoint_directory() -> None:
    for name in ("HPCOPS_ATTEMPT", "HPCOPS_CHECKPOINT_DIR"):
        with pytest.raises(SpecError) as info:
            parse_spec(f"name: t\nexperiment: e\ncommand: c\nenv: {{{name}: x}}\n", "t")
        assert info.value.problems[0].location == f"env.{name}"
        assert passthrough_problem(name) is not None


def test_the_allow_list_is_configurable_and_values_are_quoted() -> None:
    config = parse_config("jobs:\n  env_passthrough: [PATH, OMP_PLACES]\n", "c")
    spec = parse_spec("name: t\nexperiment: e\ncommand: 'true'\n", "t")
    ctx = _context(config, spec, environ={"PATH": "/a b/$(x)", "OMP_PLACES": "cores", "LANG": "C"})
    exported = _exported(render_script(spec, ctx))
    assert exported["PATH"] == "'/a b/$(x)'"
    assert exported["OMP_PLACES"] == "cores"
    assert "LANG" not in exported


def test_a_listed_variable_the_daemon_lacks_is_left_out() -> None:
    spec = parse_spec("name: t\nexperiment: e\ncommand: 'true'\n", "t")
    ctx = _context(Config(), spec, environ={"PATH": "/usr/bin"})
    assert ctx.passthrough_env == (("PATH", "/usr/bin"),)


def test_the_default_allow_list_keeps_the_daemons_path() -> None:
    assert Config().jobs.env_passthrough == list(DEFAULT_ENV_PASSTHROUGH)
    assert "PATH" in DEFAULT_ENV_PASSTHROUGH
    assert all(passthrough_problem(name) is None for name in DEFAULT_ENV_PASSTHROUGH)


def test_the_script_runs_with_the_exported_environment(tmp_path: Path) -> None:
    spec = parse_spec('name: t\nexperiment: e\ncommand: env -0 > "$HPCOPS_RUN_DIR/env.bin"\n', "t")
    run_dir = RunDir(tmp_path / "runs" / "run-000042")
    run_dir.path.mkdir(parents=True)
    config = parse_config("jobs:\n  env_passthrough: [PATH, LANG]\n", "c")
    placement = Placement(tmp_path / "runs", "/nonexistent/objects", "/usr/bin/python3")
    ctx = build_job_context(
        spec,
        config,
        placement,
        42,
        "0123456789abcdef",
        environ={**DAEMON_ENV, "PATH": "/usr/bin:/bin"},
        mlflow_env=(("MLFLOW_RUN_ID", "ab" * 16),),
    )
    run_dir.script.write_text(render_script(spec, ctx))
    # As --export=NONE starts it: a login environment and SLURM_*, none of the daemon's.
    login = {"HOME": str(tmp_path), "PATH": "/bin", "SLURM_JOB_ID": "1", "SLURM_EXPORT_ENV": "NONE",
             "MLFLOW_TRACKING_URI": "http://from-a-login-file"}  # fmt: skip
    subprocess.run(["bash", str(run_dir.script)], env=login, check=True, timeout=30,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    environ = dict(
        entry.split("=", 1)
        for entry in (run_dir.path / "env.bin").read_text().split("\0")
        if "=" in entry
    )
    assert environ["PATH"] == "/usr/bin:/bin"
    assert environ["LANG"] == DAEMON_ENV["LANG"]
    assert environ["SLURM_EXPORT_ENV"] == "ALL"
    assert environ["HPCOPS_RUN_ID"] == "r-000042"
    assert "MLFLOW_TRACKING_URI" not in environ  # a tracked run logs only into its own run
    assert environ["MLFLOW_RUN_ID"] == "ab" * 16
    assert not set(environ) & {k for k in DAEMON_ENV if k not in {"PATH", "LANG", "HOME"}}


# ─── the staging job's script ──────────────────────────────────────────────────────────────────


def test_the_staging_script_has_the_same_explicit_environment() -> None:
    spec = parse_spec(SPEC_WITH_DATA, "t")
    ctx = _context(Config(), spec)
    script = render_staging_script(spec, ctx, StagingJob(None, None, 1, 2048, 60))
    assert _header(script).count("#SBATCH --export=NONE") == 1
    exported = _exported(script)
    assert exported == {"PATH": "/opt/lab/venv/bin:/usr/bin:/bin", "LANG": "en_US.UTF-8",
                        "TZ": "Europe/Berlin"}  # fmt: skip
    for value in [*SECRET_VALUES, "not-listed", "/tmp/ssh-agent.sock"]:
        assert value not in script
    assert script.rstrip().splitlines()[-1].startswith("exec ")
    result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


# ─── what the config and the context refuse ────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("MLFLOW_TRACKING_PASSWORD", "MLflow"),
        ("MLFLOW_TRACKING_URI", "MLflow"),
        ("AWS_SECRET_ACCESS_KEY", "cloud credentials"),
        ("AWS_PROFILE", "cloud credentials"),
        ("SSH_AUTH_SOCK", "SSH agent"),
        ("GITHUB_TOKEN", "secret-looking"),
        ("HF_TOKEN", "secret-looking"),
        ("DVC_REMOTE_SECRET_X", "secret-looking"),
        ("PGPASSWORD", "secret-looking"),
        ("API_KEY", "secret-looking"),
        ("api_key", "secret-looking"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "cloud credentials"),
        ("HPCOPS_HOME", "set inside the job"),
        ("SLURM_CONF", "set inside the job"),
        ("BASH_ENV", "set inside the job"),
        ("IFS", "set inside the job"),
        ("NOT-A-NAME", "not an environment variable name"),
    ],
)
def test_the_config_refuses_a_secret_looking_or_job_owned_name(name: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"jobs:\n  env_passthrough: [PATH, '{name}']\n", "lab.yaml")
    message = str(info.value)
    assert "jobs.env_passthrough" in message and name in message and says in message


def test_the_config_refuses_a_name_listed_twice() -> None:
    with pytest.raises(ConfigError, match="PATH more than once"):
        parse_config("jobs:\n  env_passthrough: [PATH, LANG, PATH]\n", "lab.yaml")


def test_the_context_refuses_a_secret_even_past_the_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_PASSWORD"):
        JobContext(
            run_id="r-000001",
            token="0123456789abcdef",
            run_dir=RunDir(tmp_path),
            account=None,
            default_partition=None,
            lab="lab",
            passthrough_env=(("MLFLOW_TRACKING_PASSWORD", "x"),),
        )


def test_a_spec_cannot_bring_the_daemons_environment_back() -> None:
    for item in ("--export=ALL", "--export-file=/etc/environment", "--exp=ALL"):
        with pytest.raises(SpecError, match="extra_directives"):
            parse_spec(f"name: t\nexperiment: e\ncommand: x\nextra_directives: ['{item}']\n", "t")


@pytest.mark.parametrize(
    ("line", "phrase"),
    [
        ("#SBATCH --export=ALL", "--export, which hpcops controls"),
        ("#SBATCH --get-user-env", "--get-user-env, which hpcops controls"),
        ("#SBATCH --export=NONE", "appears 2 times"),
    ],
)
def test_a_lab_template_cannot_hand_jobs_the_daemons_environment(
    tmp_path: Path, line: str, phrase: str
) -> None:
    lab_dir = tmp_path / "lab_templates"
    lab_dir.mkdir()
    header = "#!/bin/bash\n{% for d in directives %}#SBATCH {{ d }}\n{% endfor %}{{ command }}\n"
    (lab_dir / "lab.sh.j2").write_text(header.replace("#!/bin/bash\n", f"#!/bin/bash\n{line}\n"))
    spec = parse_spec("name: t\nexperiment: e\ncommand: 'true'\ntemplate: lab\n", "t")
    with pytest.raises(ConfigError, match=re.escape(phrase)):
        render_script(spec, _context(Config(), spec), [lab_dir])
