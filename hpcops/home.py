"""Where a daemon's files live in its home. Light on purpose: the CLI imports it to find the
socket without importing the daemon."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    """$HPCOPS_HOME, else ~/.hpcops. Here, not in config.py: `hpcops api` (run over SSH for every
    laptop call) needs the home and nothing of pydantic."""
    env = os.environ.get("HPCOPS_HOME")
    return Path(env).expanduser() if env else Path.home() / ".hpcops"


@dataclass(frozen=True)
class HomePaths:
    home: Path

    @property
    def socket(self) -> Path:
        return self.home / "hpcops.sock"

    @property
    def lock(self) -> Path:
        return self.home / "daemon.lock"

    @property
    def pid(self) -> Path:
        return self.home / "daemon.pid"

    @property
    def log(self) -> Path:
        return self.home / "daemon.log"

    @property
    def console(self) -> Path:
        """stdout/stderr of a background daemon: tracebacks from before logging was set up."""
        return self.home / "daemon.out"

    @property
    def database(self) -> Path:
        return self.home / "hpcops.db"
