"""From a laptop over SSH: a real OpenSSH sshd on a loopback port (scripts/dev-sshd), a "laptop"
Unix user with its own keys, known_hosts and hpcops client config, and a lab member's account on
the "login node" (this machine) that runs `hpcops api` for it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import MEMBERS, SERVICE, Lab, new_lab
from laptop import (
    FAILURES,
    REMOTE_HPCOPS,
    assert_fails_clearly,
    make_laptop,
    run_as,
    start_follow,
    write_client_config,
)
from laptop import laptop_cli as shared_laptop_cli

REPO = Path(__file__).resolve().parents[2]
DEV_SSHD = REPO / "scripts" / "dev-sshd"
PORT = int(os.environ.get("HPCOPS_DEV_SSHD_PORT", "2222"))
# The dev sshd these tests use (and stop and restart once): the shared one unless the
# environment names another instance, as scripts/dev-sshd reads it.
SSHD_DIR = Path(os.environ.get("HPCOPS_DEV_SSHD_DIR", "/var/lib/hpcops-dev-sshd"))
LAPTOP = "hpcops-laptop"
MEMBER = MEMBERS[0]


def _run(*argv: str, user: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run_as(*argv, user=user, **kw)


@pytest.fixture
def laptop(sshd: str, cluster: None) -> Iterator[tuple[Lab, Path]]:
    """A lab daemon, and a laptop user whose default remote reaches it as MEMBER over SSH."""
    lab = new_lab({"quotas": {}})
    home = make_laptop(LAPTOP, MEMBER, [sshd])
    ssh_dir = home / ".ssh"
    # No ~/.ssh/config: transport auto is paramiko here (test_openssh.py covers OpenSSH).
    config = {
        "default_remote": "lab",
        "remotes": {
            "lab": {
                "host": "127.0.0.1",
                "port": PORT,
                "user": MEMBER,
                "command": [REMOTE_HPCOPS],
                "home": str(lab.home),
            },
            "nohpcops": {
                "host": "127.0.0.1",
                "port": PORT,
                "user": MEMBER,
                "command": ["/nonexistent/bin/hpcops"],
                "home": str(lab.home),
            },
            "nodns": {"host": "no-such-host.invalid", "user": MEMBER},
            "closed": {"host": "127.0.0.1", "port": 1, "user": MEMBER},
            "wrongkey": {
                "host": "127.0.0.1",
                "port": PORT,
                "user": MEMBER,
                "identity_file": str(ssh_dir / "other_key"),
            },
        },
    }
    write_client_config(home, LAPTOP, config)
    yield lab, home
    lab.stop()


def laptop_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return shared_laptop_cli(LAPTOP, *args, timeout=timeout)


def _spec(home: Path, name: str, command: str) -> str:
    path = home / f"{name}.yaml"
    path.write_text(
        json.dumps({"name": name, "experiment": "remote", "command": command, "workdir": "/tmp"})
    )
    shutil.chown(path, LAPTOP, LAPTOP)
    return str(path)


def test_submit_from_the_laptop_runs_as_the_ssh_user(laptop: tuple[Lab, Path]) -> None:
    _, home = laptop
    proc = laptop_cli("submit", "--json", _spec(home, "from-laptop", "echo hello from $HOSTNAME"))
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)["id"]
    shown = json.loads(laptop_cli("show", str(run), "--json").stdout)
    assert shown["owner"] == MEMBER, "the daemon saw the SSH user, as the OS knows it"
    follow = laptop_cli("logs", str(run), "--follow")
    assert follow.returncode == 0 and follow.stdout.startswith("hello from"), follow
    assert json.loads(laptop_cli("show", str(run), "--json").stdout)["state"] == "COMPLETED"
    listing = json.loads(laptop_cli("--remote", "lab", "ls", "--json").stdout)
    assert [r["id"] for r in listing] == [run]


def _laptop_git(repo: Path, *args: str) -> str:
    proc = _run(
        "git",
        "-C",
        str(repo),
        "-c",
        "user.name=Ana",
        "-c",
        "user.email=ana@lab",
        *args,
        user=LAPTOP,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_laptops_exact_commit_runs_and_only_new_objects_travel(
    laptop: tuple[Lab, Path],
) -> None:
    _, home = laptop
    repo = home / "project"
    shutil.rmtree(repo, ignore_errors=True)
    _run("mkdir", str(repo), user=LAPTOP).check_returncode()
    _laptop_git(repo, "init", "--quiet")
    # 2 MiB that do not compress: the first shipment must carry them, the second must not.
    (repo / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (repo / "message.txt").write_text("v1\n")
    (repo / "spec.yaml").write_text(
        json.dumps(
            {
                "name": "laptop-code",
                "experiment": "remote",
                "command": "git rev-parse HEAD; cat message.txt",
                "code": {"repo": "."},
            }
        )
    )
    subprocess.run(["chown", "-R", f"{LAPTOP}:{LAPTOP}", str(repo)], check=True)
    _laptop_git(repo, "add", ".")
    _laptop_git(repo, "commit", "--quiet", "-m", "v1")

    shipped = []
    for version in ("v1", "v2"):
        if version == "v2":
            (repo / "message.txt").write_text("v2\n")
            _laptop_git(repo, "commit", "--quiet", "-am", "v2")
        head = _laptop_git(repo, "rev-parse", "HEAD")
        proc = laptop_cli("submit", "--json", str(repo / "spec.yaml"))
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        shipped.append(result["code"]["bundle_bytes"])
        run = str(result["id"])
        follow = laptop_cli("logs", run, "--follow")
        assert follow.stdout.splitlines() == [head, version], follow
        shown = json.loads(laptop_cli("show", run, "--json").stdout)
        assert shown["state"] == "COMPLETED" and shown["code"]["commit"] == head
    assert shipped[0] > 2 * 1024 * 1024, "the first submit ships the whole history"
    assert shipped[1] < 4096, f"the second ships the new commit only, not {shipped[1]} bytes"


def test_unknown_host_key_is_refused_with_its_fingerprint(laptop: tuple[Lab, Path]) -> None:
    _, home = laptop
    known = home / ".ssh" / "known_hosts"
    known.write_text("")
    proc = laptop_cli("ls")
    assert proc.returncode == 5, proc.stderr
    assert "not in ~/.ssh/known_hosts" in proc.stderr and "SHA256:" in proc.stderr
    assert "Nothing was added" in proc.stderr
    assert known.read_text() == "", "no key is ever added silently"


def test_changed_host_key_is_refused(laptop: tuple[Lab, Path], sshd: str) -> None:
    _, home = laptop
    fake = _run(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "/tmp/hpcops-fake-hostkey", input="y\n"
    )
    assert fake.returncode == 0, fake.stderr
    public = Path("/tmp/hpcops-fake-hostkey.pub").read_text().split()[:2]
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{PORT} {' '.join(public)}\n")
    proc = laptop_cli("ls")
    assert proc.returncode == 5 and "has CHANGED" in proc.stderr, proc.stderr


@pytest.mark.parametrize("remote", [name for name, _, _ in FAILURES])
def test_clear_distinct_errors(laptop: tuple[Lab, Path], remote: str) -> None:
    assert_fails_clearly(laptop_cli("--remote", remote, "ls"), remote, remote)


def test_daemon_not_running_is_said_plainly(laptop: tuple[Lab, Path]) -> None:
    lab, _ = laptop
    lab.stop()
    proc = laptop_cli("ls")
    assert proc.returncode == 3 and "no hpcops daemon runs on" in proc.stderr, proc.stderr


def _session_pids(master: int) -> list[int]:
    """sshd's per-connection processes: children of the listener."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return pids


# Exclusive: it stops the shared sshd and ends its sessions, which other tests use meanwhile.
@pytest.mark.exclusive
def test_sshd_stopping_during_follow_is_said_clearly(laptop: tuple[Lab, Path]) -> None:
    lab, home = laptop
    run = int(
        json.loads(
            laptop_cli(
                "submit",
                "--json",
                _spec(home, "long-follow", "for i in $(seq 1 60); do echo tick $i; sleep 1; done"),
            ).stdout
        )["id"]
    )
    follow = start_follow(LAPTOP, str(run))
    try:
        master = int((SSHD_DIR / "sshd.pid").read_text())
        # Stopping the listener leaves live sessions alone (OpenSSH forks one per connection):
        # end those too, by pid, as a reboot of the login node's sshd would.
        for pid in _session_pids(master):
            os.kill(pid, signal.SIGTERM)
        subprocess.run([str(DEV_SSHD), "down"], check=True, stdout=subprocess.DEVNULL)
        _, stderr = follow.communicate(timeout=60)
        assert follow.returncode == 3, stderr
        assert "lost the SSH connection" in stderr or "connection to remote" in stderr, stderr
    finally:
        if follow.poll() is None:
            follow.kill()
        subprocess.run([str(DEV_SSHD), "up"], check=True, stdout=subprocess.DEVNULL)
    # The daemon and its runs did not notice.
    assert lab.json(SERVICE, "show", str(run))["state"] in {"PENDING", "RUNNING"}
    lab.ok(SERVICE, "cancel", str(run))
    time.sleep(1)
