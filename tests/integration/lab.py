"""A lab of real Unix users around one daemon: the daemon runs as a service account, and a lead,
two members and an outsider call the real CLI as themselves (runuser), so the daemon learns who
they are from the socket's peer credentials, as in production."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratch import made_here, scratch_dir

REPO = Path(__file__).resolve().parents[2]
GROUP = "hpcopslab"
SERVICE = "hpcops-svc"
LEAD = "hpcops-lead"
MEMBERS = ("hpcops-m1", "hpcops-m2")
OUTSIDER = "hpcops-out"


def _ensure_group(name: str) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", name], check=True)


def _ensure_user(name: str, *, in_group: bool) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--create-home", "--shell", "/bin/bash", name]
        if in_group:
            cmd[1:1] = ["--groups", GROUP]
        subprocess.run(cmd, check=True)


def ensure_lab_users() -> None:
    _ensure_group(GROUP)
    for name in (SERVICE, LEAD, *MEMBERS):
        _ensure_user(name, in_group=True)
    _ensure_user(OUTSIDER, in_group=False)
    # Slurm associations: the service account submits the lab's runs; members may also submit
    # by hand under the lab's account (the quotas must count those jobs too).
    for name in (SERVICE, *MEMBERS):
        subprocess.run(
            [str(REPO / "scripts" / "dev-cluster"), "add-user", name],
            check=True,
            stdout=subprocess.DEVNULL,
        )


@dataclass
class Lab:
    home: Path
    config: dict[str, Any]
    # Variables in the daemon's environment only (e.g. test secrets): given to `daemon start`.
    daemon_env: dict[str, str] = field(default_factory=dict)

    def cli(
        self, user: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            "runuser",
            "-u",
            user,
            "--",
            sys.executable,
            "-m",
            "hpcops",
            "--home",
            str(self.home),
            *args,
        ]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd="/tmp", env=env
        )

    def ok(self, user: str, *args: str, env: dict[str, str] | None = None) -> str:
        proc = self.cli(user, *args, env=env)
        if proc.returncode != 0:
            raise AssertionError(
                f"{user}: hpcops {' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
            )
        return proc.stdout

    def json(self, user: str, *args: str) -> Any:
        return json.loads(self.ok(user, *args, "--json"))

    def start(self) -> None:
        (self.home / "config.yaml").write_text(json.dumps(self.config))
        shutil.chown(self.home / "config.yaml", SERVICE, SERVICE)
        self.ok(SERVICE, "daemon", "start", env={**os.environ, **self.daemon_env})

    def stop(self) -> None:
        if (self.home / "daemon.pid").exists():
            self.cli(SERVICE, "daemon", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def spec(self, owner: str, name: str, command: str, **extra: Any) -> str:
        """A spec file the owner can read, with a unique name (Slurm's accounting is searched
        by name)."""
        unique = f"{name}-{uuid.uuid4().hex[:6]}"
        spec = {"name": unique, "experiment": "lab", "command": command, "workdir": "/tmp", **extra}
        directory = self.home.parent / f"{self.home.name}-specs"
        if not directory.exists():
            directory.mkdir(mode=0o755)
            made_here(directory)
        path = directory / f"{unique}.yaml"
        path.write_text(json.dumps(spec))
        shutil.chown(path, owner, owner)
        return str(path)

    def submit(self, owner: str, name: str, command: str, **extra: Any) -> int:
        return int(self.json(owner, "submit", self.spec(owner, name, command, **extra))["id"])

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s")
            time.sleep(0.5)


def new_lab(config: dict[str, Any], daemon_env: dict[str, str] | None = None) -> Lab:
    """A started lab daemon with `config` over the defaults; `daemon_env` goes into the
    daemon's environment only, never the CLI's."""
    ensure_lab_users()
    home = scratch_dir("hpcops-lab")
    shutil.chown(home, SERVICE, SERVICE)
    base: dict[str, Any] = {
        "lab": "testlab",
        "max_active": 50,
        "pending_window": 4,
        "slurm": {"account": "lab", "default_partition": "cpu", "squeue_interval_s": 3},
        "daemon": {"tick_interval_s": 0.5, "log_level": "DEBUG"},
        "access": {
            "socket_group": GROUP,
            "members_group": GROUP,
            "leads": [LEAD],
            "member_priority_min": -10,
            "member_priority_max": 10,
        },
    }
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    lab = Lab(home=home, config=base, daemon_env=dict(daemon_env or {}))
    lab.start()
    return lab
