"""A job's environment on the real cluster (issue 12, item 4): the daemon's secrets stay in the
daemon; the job gets the allow-listed variables (jobs.env_passthrough) and what hpcops sets, and
so do the tasks an `srun` inside the job starts."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, running_daemon, write_spec

SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": "hpcops-test-secret-mlflow",
    "AWS_SECRET_ACCESS_KEY": "hpcops-test-secret-aws",
    "SSH_AUTH_SOCK": "/tmp/hpcops-test-secret-agent.sock",
    "DAEMON_ONLY_SETTING": "hpcops-test-not-listed",
}
# The daemon's python first on its PATH, as a lab's venv would be: jobs run `python` from it.
DAEMON_PATH = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"


@pytest.fixture
def daemon_with_secrets(cluster: None) -> Iterator[Daemon]:
    yield from running_daemon(
        "hpcops-jobenv",
        env={**SECRETS, "PATH": DAEMON_PATH, "TZ": "Europe/Berlin"},
        jobs={"env_passthrough": ["PATH", "TZ"]},
    )


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_no_secret_of_the_daemon_reaches_a_job_or_its_tasks(
    daemon_with_secrets: Daemon, tmp_path: Path
) -> None:
    command = (
        'env > "$HPCOPS_RUN_DIR/job-env.txt"\n'
        'srun --ntasks=1 env > "$HPCOPS_RUN_DIR/task-env.txt"\n'
        "python -c 'import hpcops, sys; print(sys.executable)'\n"
    )
    spec = write_spec(tmp_path, "jobenv", command, env={"MEMBER_SETTING": "from-the-spec"})
    run = daemon_with_secrets.submit(spec)
    data = daemon_with_secrets.wait_ended(run)
    assert data["state"] == "COMPLETED", data
    run_dir = Path(data["run_dir"])

    for name in ("job-env.txt", "task-env.txt"):
        text = (run_dir / name).read_text()
        for secret in SECRETS.values():
            assert secret not in text, f"{secret} reached the job ({name})"
        environ = _read_env(run_dir / name)
        assert "MLFLOW_TRACKING_PASSWORD" not in environ
        assert "AWS_SECRET_ACCESS_KEY" not in environ
        assert environ.get("SSH_AUTH_SOCK") != SECRETS["SSH_AUTH_SOCK"]
        # The allow-list, with the daemon's values, and what hpcops sets.
        assert environ["PATH"] == DAEMON_PATH, name
        assert environ["TZ"] == "Europe/Berlin", name
        assert environ["HPCOPS_RUN_ID"] == f"r-{run:06d}", name
        assert environ["HPCOPS_RUN_DIR"] == str(run_dir), name
        assert environ["MEMBER_SETTING"] == "from-the-spec", name
        assert environ["SLURM_JOB_ID"] == data["slurm_job_id"], name
    # `python` is the daemon's, from the passed-through PATH.
    logs = daemon_with_secrets.cli("logs", str(run), check=True).stdout
    assert logs.strip().splitlines()[-1] == sys.executable, logs
    script = (run_dir / "job.sbatch").read_text()
    assert "\n#SBATCH --export=NONE\n" in script
    for secret in SECRETS.values():
        assert secret not in script
