"""A "laptop": a Unix user on this machine with its own SSH keys, known_hosts and hpcops client
config, reaching a lab member's account on the "login node" (this machine, through a dev sshd).
Shared by the tests of the laptop path (test_remote.py: paramiko; test_openssh.py: OpenSSH)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEV_SSHD = REPO / "scripts" / "dev-sshd"
# What a remote runs on the login node: this checkout's hpcops.
REMOTE_HPCOPS = str(REPO / ".venv" / "bin" / "hpcops")


# The ways a laptop call can fail before the daemon answers, by the suffix of the remote that
# provokes each (a key nobody accepts, no hpcops there, no such host, a closed port): the exit
# code and the phrase each transport's message must carry.
FAILURES = [
    ("wrongkey", 5, "refused our SSH keys"),
    ("nohpcops", 3, "is not found on remote '{remote}'"),
    ("nodns", 3, "cannot resolve 'no-such-host.invalid'"),
    ("closed", 3, "cannot reach"),
]


def assert_fails_clearly(proc: subprocess.CompletedProcess[str], remote: str, case: str) -> None:
    """`proc` (a laptop call to `remote`) failed as FAILURES says the `case` does."""
    code, phrase = {name: (c, p) for name, c, p in FAILURES}[case]
    assert proc.returncode == code, proc.stderr
    assert phrase.format(remote=remote) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def run_as(*argv: str, user: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """argv as `user` (runuser), from /tmp; output captured as text."""
    if user is not None:
        argv = ("runuser", "-u", user, "--", *argv)
    return subprocess.run(list(argv), capture_output=True, text=True, cwd="/tmp", **kw)


def make_laptop(user: str, member: str, known_hosts: list[str]) -> Path:
    """The Unix user `user` (created once) with a fresh ~/.ssh: a new key that `member` accepts
    (dev-sshd add-key) and exactly these known_hosts lines. Returns its home."""
    if run_as("id", user).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
    home = Path(f"~{user}").expanduser()
    ssh_dir = home / ".ssh"
    shutil.rmtree(ssh_dir, ignore_errors=True)
    ssh_dir.mkdir(mode=0o700)
    shutil.chown(ssh_dir, user, user)
    keygen = ("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f")
    run_as(*keygen, str(ssh_dir / "id_ed25519"), user=user).check_returncode()
    run_as(str(DEV_SSHD), "add-key", member, str(ssh_dir / "id_ed25519.pub")).check_returncode()
    # A second key nobody accepts, for the "keys refused" cases.
    run_as(*keygen, str(ssh_dir / "other_key"), user=user).check_returncode()
    write_owned(ssh_dir / "known_hosts", "".join(f"{line}\n" for line in known_hosts), user)
    return home


def write_owned(path: Path, text: str, user: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    shutil.chown(path, user, user)


def write_client_config(home: Path, user: str, config: dict[str, Any]) -> None:
    config_dir = home / ".config" / "hpcops"
    write_owned(config_dir / "config.yaml", json.dumps(config), user, 0o644)
    subprocess.run(["chown", "-R", f"{user}:{user}", str(home / ".config")], check=True)


def laptop_cli(
    user: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`hpcops ARGS` as the laptop user."""
    return run_as(
        sys.executable,
        "-m",
        "hpcops",
        *args,
        user=user,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_follow(user: str, run: str) -> subprocess.Popen[str]:
    """`hpcops logs RUN --follow` as the laptop user, once it has printed its first line (which
    must be the job's first `tick`); the caller ends it (by its pid) if it outlives the test."""
    follow = subprocess.Popen(
        ["runuser", "-u", user, "--", sys.executable, "-m", "hpcops", "logs", run, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/tmp",
    )
    assert follow.stdout is not None
    first = follow.stdout.readline()
    if not first.startswith("tick"):
        follow.kill()  # our own child, by its pid
        follow.wait()
        raise AssertionError(f"the follow began with {first!r}, not a tick")
    return follow
