"""Integration tests run the real daemon (as a process) against the real dev Slurm cluster.

Nothing here stands in for Slurm: the cluster comes from scripts/dev-cluster (Debian's packages),
and the daemon and CLI run as the user would run them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow_server import MlflowServer, free_port
from scratch import remove_all, scratch_dir

REPO = Path(__file__).resolve().parents[2]
DEV_CLUSTER = REPO / "scripts" / "dev-cluster"
ACTIVE = {"QUEUED", "HELD", "STAGING", "SUBMITTING", "PENDING", "RUNNING"}


# Every test in this directory is marked `cluster` by tests/conftest.py (the tier is chosen there).


@pytest.fixture(scope="session")
def cluster() -> None:
    """The dev cluster, brought up if it is not (scripts/test brings it up first)."""
    status = subprocess.run([str(DEV_CLUSTER), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        subprocess.run([str(DEV_CLUSTER), "up"], check=True)


@pytest.fixture(scope="session")
def sshd() -> str:
    """The dev sshd (scripts/dev-sshd) on loopback; its known_hosts line."""
    dev_sshd = REPO / "scripts" / "dev-sshd"
    subprocess.run([str(dev_sshd), "up"], check=True, stdout=subprocess.DEVNULL)
    return subprocess.run(
        [str(dev_sshd), "known-hosts"], check=True, capture_output=True, text=True
    ).stdout.strip()


def slurm(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def sacct_jobs_named(name: str, *, at_least: int = 0, timeout: float = 20) -> list[dict[str, str]]:
    """Every allocation Slurm's accounting holds under this job name (for duplicate checks).

    slurmdbd lags: for about a second a job's row is a placeholder named `allocation`, so wait up
    to `timeout` for `at_least` rows, then look once more to catch a late duplicate."""
    deadline = time.monotonic() + timeout
    while True:
        rows = sacct_rows_named(name)
        if len(rows) >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if at_least:
        time.sleep(2)
        rows = sacct_rows_named(name)
    return rows


# sacct's fields the tests read, by the key each row gives them; Comment last (free text).
SACCT_KEYS = {
    "job_id": "JobID",
    "state": "State",
    "exit_code": "ExitCode",
    "start": "Start",
    "end": "End",
    "elapsed": "ElapsedRaw",
    "comment": "Comment",
}


def sacct_rows_named(name: str) -> list[dict[str, str]]:
    """sacct's allocations under this job name now, keyed as SACCT_KEYS (no waiting: see
    sacct_jobs_named)."""
    out = slurm(
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        "--allusers",
        "--starttime=now-1days",
        f"--name={name}",
        "--format=" + ",".join(SACCT_KEYS.values()),
    )
    return [
        dict(zip(SACCT_KEYS, line.split("|", len(SACCT_KEYS) - 1), strict=True))
        for line in out.splitlines()
    ]


@dataclass
class Daemon:
    """One hpcops daemon in its own home, driven through the real CLI."""

    home: Path
    config: dict[str, Any]
    env_extra: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "HPCOPS_HOME": str(self.home), **self.env_extra}

    def cli(
        self, *args: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "hpcops", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"hpcops {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json", check=True).stdout)

    def start(self, **env: str) -> None:
        self.env_extra = dict(env)
        (self.home / "config.yaml").write_text(json.dumps(self.config))
        self.cli("daemon", "start", check=True)

    def pid(self) -> int:
        return int((self.home / "daemon.pid").read_text())

    def stop(self) -> None:
        if (self.home / "daemon.pid").exists():
            self.cli("daemon", "stop")

    def kill9(self) -> None:
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            # The daemon was started detached; reap it if it happens to be our child.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)

    def submit(self, spec: Path) -> int:
        return int(self.json("submit", str(spec))["id"])

    def show(self, run: int) -> dict[str, Any]:
        result: dict[str, Any] = self.json("show", str(run))
        return result

    def wait_ended(self, run: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data = self.show(run)
            if data["state"] not in ACTIVE:
                return data
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run} still {data['state']} after {timeout} s: {data}")
            time.sleep(0.5)

    def wait_state(self, run: int, states: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data = self.show(run)
            if data["state"] in states:
                return data
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"run {run} is {data['state']}, not {states}, after {timeout} s"
                )
            time.sleep(0.3)


def running_daemon(
    prefix: str = "hpcops-test", env: dict[str, str] | None = None, **config: Any
) -> Iterator[Daemon]:
    """A root daemon in a fresh home under /tmp (scratch.py), with `config` over the test
    defaults; its runs still in Slurm are cancelled afterwards (by job id: never other tests'
    jobs)."""
    home = scratch_dir(prefix)
    base: dict[str, Any] = {
        "lab": "testlab",
        "max_active": 20,
        "slurm": {"account": "lab", "default_partition": "cpu", "squeue_interval_s": 10},
        "daemon": {"tick_interval_s": 0.5, "log_level": "DEBUG"},
    }
    for key, value in config.items():
        base[key] = {**base[key], **value} if isinstance(base.get(key), dict) else value
    d = Daemon(home=home, config=base)
    d.start(**(env or {}))
    yield d
    try:
        runs = d.json("ls", "--all") if (home / "daemon.pid").exists() else []
    except AssertionError:
        runs = []
    d.stop()
    # Sweeps and pipelines are rows of their own in `ls --json`, without a job of their own.
    live = [r["slurm_job_id"] for r in runs if r.get("slurm_job_id") and r["state"] in ACTIVE]
    if live:
        subprocess.run(["scancel", *live], check=False)


@pytest.fixture
def daemon(cluster: None) -> Iterator[Daemon]:
    yield from running_daemon()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """`predicate()` once it is truthy, polled every 0.3 s; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def server() -> Iterator[MlflowServer]:
    """A real `mlflow server` on a loopback port, one per test module."""
    srv = MlflowServer(Path("/tmp") / f"hpcops-mlflow-{uuid.uuid4().hex[:8]}", free_port())
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.state_dir, ignore_errors=True)


def write_spec(directory: Path, name: str, command: str, **extra: Any) -> Path:
    """A spec file with a unique name, so Slurm's accounting can be searched by job name."""
    unique = f"{name}-{uuid.uuid4().hex[:8]}"
    spec: dict[str, Any] = {"name": unique, "experiment": "integration", "command": command}
    spec.update(extra)
    path = directory / f"{unique}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def pytest_sessionfinish(session: pytest.Session) -> None:
    """This worker's folders under /tmp go when none of its tests failed (scratch.py)."""
    if session.testsfailed == 0:
        remove_all()
