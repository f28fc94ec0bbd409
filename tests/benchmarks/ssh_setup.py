"""Shared by the SSH benchmarks: a daemon that reaches Slurm over SSH (the dev sshd on loopback),
as a bench-only Unix user whose jobs Slurm keeps pending.

The jobs never run: the bench user's association gets MaxJobs=0 for the benchmark (they pend
with AssocMaxJobsLimit), so 200 active jobs cost the shared dev cluster no CPU and delay no one
else's tests. Pending counts as active for the daemon, which is what is measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.benchmarks.common import REPO, UserDaemon, ensure_user

SSH_BENCH_USER = "hpcopssshbench"
DEV_SSHD = REPO / "scripts" / "dev-sshd"
SSHD_LOG = Path("/var/lib/hpcops-dev-sshd/sshd.log")
PORT = 2222


def sshd_known_hosts() -> str:
    """The dev sshd's known_hosts line. The sshd is shared with the tests (and CI runs on this
    machine): a benchmark never starts, restarts or stops it, so it must already run."""
    status = subprocess.run([str(DEV_SSHD), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        raise RuntimeError(
            f"the dev sshd is not running ({status.stdout.strip()}); start it with "
            "`scripts/dev-sshd up` first (benchmarks never start or restart it themselves)"
        )
    return subprocess.run(
        [str(DEV_SSHD), "known-hosts"], check=True, capture_output=True, text=True
    ).stdout.strip()


def user_key(user: str, name: str) -> Path:
    """A fresh key pair in the user's ~/.ssh, owned by the user."""
    home = Path(f"~{user}").expanduser()
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    key = ssh_dir / name
    key.unlink(missing_ok=True)
    Path(f"{key}.pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["chown", "-R", f"{user}:{user}", str(ssh_dir)], check=True)
    return key


def authorize(user: str, key: Path) -> None:
    subprocess.run(
        [str(DEV_SSHD), "add-key", user, f"{key}.pub"], check=True, stdout=subprocess.DEVNULL
    )


@contextlib.contextmanager
def jobs_held_pending(user: str, jobs: list[str] | None = None) -> Iterator[None]:
    """The user's jobs are accepted but never start (association MaxJobs=0), then released.
    At the end, the ids in `jobs` (filled in by the caller while it runs) are cancelled, and
    only those; without a list, every job of the user."""
    where = ["where", f"name={user}", "account=lab"]
    subprocess.run(
        ["sacctmgr", "-i", "modify", "user", *where, "set", "MaxJobs=0"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        if jobs is None:
            subprocess.run(["scancel", "-u", user], check=False)
        elif jobs:
            subprocess.run(["scancel", *sorted(set(jobs))], check=False)
        subprocess.run(
            ["sacctmgr", "-i", "modify", "user", *where, "set", "MaxJobs=-1"],
            check=False,
            stdout=subprocess.DEVNULL,
        )


def ssh_daemon(extra_ssh: dict[str, Any] | None = None, **config: Any) -> UserDaemon:
    """A daemon as SSH_BENCH_USER whose Slurm is reached over SSH as itself, with run
    directories under a fresh directory on the "cluster"."""
    ensure_user(SSH_BENCH_USER)
    key = user_key(SSH_BENCH_USER, "hpcops_cluster_key")
    authorize(SSH_BENCH_USER, key)
    known_hosts = Path(f"~{SSH_BENCH_USER}").expanduser() / ".ssh" / "known_hosts_dev_sshd"
    known_hosts.write_text(sshd_known_hosts() + "\n")
    shutil.chown(known_hosts, SSH_BENCH_USER, SSH_BENCH_USER)
    run_root = Path("/tmp") / f"hpcops-sshbench-runs-{uuid.uuid4().hex[:8]}"
    base: dict[str, Any] = {
        "lab": "bench",
        "run_root": str(run_root),
        "tracking": {"enabled": False},  # relay stores cannot live off the cluster
        "slurm": {
            "account": "lab",
            "default_partition": "cpu",
            "transport": "ssh",
            "ssh": {
                "host": "127.0.0.1",
                "port": PORT,
                "user": SSH_BENCH_USER,
                "identity_file": str(key),
                "known_hosts": str(known_hosts),
                **(extra_ssh or {}),
            },
        },
        "daemon": {"tick_interval_s": 1.0},
    }
    for name, value in config.items():
        if isinstance(value, dict) and isinstance(base.get(name), dict):
            base[name] = {**base[name], **value}
        else:
            base[name] = value
    return UserDaemon(SSH_BENCH_USER, base)


def sshd_log_offset() -> int:
    return SSHD_LOG.stat().st_size


def logins_since(offset: int, user: str) -> int:
    """Connections sshd accepted for the user since the log offset (the server's own count)."""
    with SSHD_LOG.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    return len(re.findall(rf"Accepted publickey for {re.escape(user)} from", text))


def commands_since(offset: int, user: str) -> int:
    with SSHD_LOG.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    return len(re.findall(rf"Starting session: command for {re.escape(user)} from", text))


def _established(filter_expression: str) -> list[str]:
    """`ss` lines of established TCP connections matching the filter, with their processes."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", filter_expression],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def daemon_ports(daemon_pid: int) -> list[int]:
    """Local ports of the daemon's connections to the sshd."""
    return [
        int(line.split()[2].rsplit(":", 1)[1])  # Recv-Q Send-Q Local Peer Process
        for line in _established(f"( dport = :{PORT} )")
        if f"pid={daemon_pid}," in line
    ]


def kill_server_side(local_port: int) -> int:
    """SIGKILL the sshd processes of one connection, found by its socket (never by name)."""
    lines = _established(f"( sport = :{PORT} and dport = :{local_port} )")
    pids = {int(p) for line in lines for p in re.findall(r"pid=(\d+)", line)}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
