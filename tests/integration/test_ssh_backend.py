"""A daemon off the cluster: Slurm's commands and the run directories over SSH.

The daemon runs as the lab's service account (hpcops-svc) and reaches the "login node" (the real
dev sshd on 127.0.0.1:2222, scripts/dev-sshd) as another account, CLUSTER_USER, with a key and a
known_hosts file of its own. The run directories live in a directory only CLUSTER_USER can enter,
so every marker, script and log must come over SSH: the daemon's own account cannot see them.
The SSH connection is killed from the server's side (its sshd processes, found by the daemon's
local port, killed by pid) while jobs are active.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import sacct_jobs_named
from lab import MEMBERS, SERVICE, Lab, new_lab

REPO = Path(__file__).resolve().parents[2]
DEV_SSHD = REPO / "scripts" / "dev-sshd"
DEV_CLUSTER = REPO / "scripts" / "dev-cluster"
PORT = int(os.environ.get("HPCOPS_DEV_SSHD_PORT", "2222"))
CLUSTER_USER = "hpcops-cluster"
MEMBER = MEMBERS[0]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "UNKNOWN"}


def _ensure_cluster_user() -> None:
    if subprocess.run(["id", CLUSTER_USER], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", CLUSTER_USER], check=True
        )
    subprocess.run(
        [str(DEV_CLUSTER), "add-user", CLUSTER_USER], check=True, stdout=subprocess.DEVNULL
    )


@pytest.fixture
def offsite(sshd: str, cluster: None) -> Iterator[tuple[Lab, Path]]:
    """A lab daemon that reaches Slurm over SSH as CLUSTER_USER; and its run_root."""
    _ensure_cluster_user()
    keys = Path("/tmp") / f"hpcops-sshkeys-{uuid.uuid4().hex[:8]}"
    keys.mkdir(mode=0o700)
    key = keys / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run([str(DEV_SSHD), "add-key", CLUSTER_USER, f"{key}.pub"], check=True)
    (keys / "known_hosts").write_text(sshd + "\n")
    subprocess.run(["chown", "-R", f"{SERVICE}:{SERVICE}", str(keys)], check=True)
    # Only CLUSTER_USER may enter: the daemon's own account cannot touch a run directory
    # except over SSH.
    private = Path("/tmp") / f"hpcops-cluster-{uuid.uuid4().hex[:8]}"
    private.mkdir(mode=0o700)
    shutil.chown(private, CLUSTER_USER, CLUSTER_USER)
    run_root = private / "runs"
    lab = new_lab(
        {
            "run_root": str(run_root),
            "pending_window": 2,
            # Off the cluster, runs are recorded only by a tracking server the jobs reach.
            "tracking": {"enabled": False},
            "slurm": {
                "transport": "ssh",
                "squeue_interval_s": 5,
                "ssh": {
                    "host": "127.0.0.1",
                    "port": PORT,
                    "user": CLUSTER_USER,
                    "identity_file": str(key),
                    "known_hosts": str(keys / "known_hosts"),
                    "connect_timeout_s": 10,
                    "min_reconnect_interval_s": 3,
                },
            },
        }
    )
    yield lab, run_root
    runs = []
    if (lab.home / "daemon.pid").exists():
        proc = lab.cli(SERVICE, "ls", "--all", "--json")
        runs = json.loads(proc.stdout) if proc.returncode == 0 else []
    lab.stop()
    live = [r["slurm_job_id"] for r in runs if r["slurm_job_id"] and r["state"] not in FINAL]
    if live:
        subprocess.run(["scancel", *live], check=False)
    shutil.rmtree(keys, ignore_errors=True)
    shutil.rmtree(private, ignore_errors=True)


def _status(lab: Lab) -> dict[str, Any]:
    slurm: dict[str, Any] = lab.json(SERVICE, "daemon", "status")["slurm"]
    return slurm


def _ss(*filter_words: str) -> list[str]:
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", *filter_words],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def daemon_connections(daemon_pid: int) -> list[int]:
    """Local ports of the daemon's TCP connections to the sshd."""
    ports = []
    for line in _ss(f"( dport = :{PORT} )"):
        if f"pid={daemon_pid}," in line:
            local = line.split()[2]  # Recv-Q Send-Q Local Peer Process
            ports.append(int(local.rsplit(":", 1)[1]))
    return ports


def kill_connection_server_side(local_port: int) -> list[int]:
    """SIGKILL the sshd processes serving the connection from local_port, found by the socket
    they hold (never by name)."""
    pids = set()
    for line in _ss(f"( sport = :{PORT} and dport = :{local_port} )"):
        pids.update(int(p) for p in re.findall(r"pid=(\d+)", line))
    assert pids, f"no sshd process holds the connection from port {local_port}"
    killed = []
    for pid in sorted(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue  # gone since ss listed it (CI saw one): the others still hold the connection
        killed.append(pid)
    assert killed, f"every sshd process of the connection from port {local_port} had exited"
    return killed


def _states(lab: Lab, runs: list[int]) -> dict[int, str]:
    listing = lab.json(SERVICE, "ls", "--all")
    return {r["id"]: r["state"] for r in listing if r["id"] in runs}


def test_connection_killed_while_jobs_are_active(offsite: tuple[Lab, Path]) -> None:
    lab, run_root = offsite
    status = _status(lab)
    assert status["transport"] == "ssh" and status["ssh_connections_opened"] == 1, status
    daemon_pid = int((lab.home / "daemon.pid").read_text())
    names = [lab.spec(MEMBER, "offsite", "sleep 20; echo done $HPCOPS_RUN_ID") for _ in range(5)]
    runs = [int(lab.json(MEMBER, "submit", path)["id"]) for path in names]

    # pending_window 2: releases go on while jobs start, so the first kill lands among claims,
    # sbatch calls, marker reads and polls.
    lab.wait(
        lambda: any(s in ("PENDING", "RUNNING") for s in _states(lab, runs).values()),
        60,
        "a run in Slurm",
    )
    killed = []
    for _ in range(2):
        ports = daemon_connections(daemon_pid)
        assert len(ports) == 1, f"the daemon holds one SSH connection, not {ports}"
        old_port = ports[0]
        killed.append(kill_connection_server_side(old_port))
        states = _states(lab, runs)
        assert any(s in ("SUBMITTING", "PENDING", "RUNNING") for s in states.values()), states
        # It reconnects by itself (min_reconnect_interval_s is 3 s here).
        lab.wait(
            lambda old=old_port: (p := daemon_connections(daemon_pid)) != [] and old not in p,
            60,
            "a new SSH connection",
        )
        time.sleep(4)

    lab.wait(lambda: set(_states(lab, runs).values()) <= FINAL, 240, "every run ended")
    assert set(_states(lab, runs).values()) == {"COMPLETED"}, _states(lab, runs)
    for run, spec_path in zip(runs, names, strict=True):
        name = Path(spec_path).stem
        rows = sacct_jobs_named(name, at_least=1)
        assert len(rows) == 1, f"run {run} ({name}) has {len(rows)} Slurm jobs: {rows}"
        # The logs come over the same SSH connection (SFTP).
        assert lab.ok(MEMBER, "logs", str(run)).strip() == f"done r-{run:06d}"
        shown = lab.json(SERVICE, "show", str(run))
        assert shown["run_dir"].startswith(str(run_root))

    opened = _status(lab)["ssh_connections_opened"]
    # One at start, one after each kill: a reconnect per drop, not per job or per poll. The dev
    # sshd is shared: another suite's `dev-sshd down` may drop the connection once more.
    assert 1 + len(killed) <= opened <= 3 + len(killed), opened
    log = (lab.home / "daemon.log").read_text()
    assert len(re.findall(r"SSH connection \d+ to \S+ \(slurm\.ssh\) opened", log)) == opened
    assert len(re.findall(r"SSH connection to \S+ \(slurm\.ssh\) lost", log)) >= len(killed)
    # The daemon's own account never saw the run directories: they came over SSH only.
    denied = subprocess.run(
        ["runuser", "-u", SERVICE, "--", "ls", str(run_root)], capture_output=True, text=True
    )
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def test_crash_after_sbatch_is_reconciled_over_ssh(
    offsite: tuple[Lab, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 right after sbatch returned (run still SUBMITTING): the restarted daemon finds the
    job by its token through squeue over SSH and adopts it; nothing is submitted twice."""
    lab, _ = offsite
    lab.stop()
    monkeypatch.setenv("HPCOPS_FAULT", "after_sbatch")
    lab.start()
    spec = lab.spec(MEMBER, "offsite-crash", "sleep 3; echo adopted")
    run = int(lab.json(MEMBER, "submit", spec)["id"])
    pid_file = lab.home / "daemon.pid"
    lab.wait(lambda: lab.cli(SERVICE, "daemon", "status").returncode == 3, 60, "daemon died")
    pid_file.unlink(missing_ok=True)
    monkeypatch.delenv("HPCOPS_FAULT")
    lab.start()
    lab.wait(lambda: lab.json(SERVICE, "show", str(run))["state"] in FINAL, 120, "the run ended")
    shown = lab.json(SERVICE, "show", str(run))
    assert shown["state"] == "COMPLETED", shown
    history = lab.json(SERVICE, "history", str(run))
    assert any("adopted Slurm job" in (e["reason"] or "") for e in history), history
    rows = sacct_jobs_named(Path(spec).stem, at_least=1)
    assert len(rows) == 1, rows
