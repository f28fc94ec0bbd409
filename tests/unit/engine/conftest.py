"""Fixtures of the engine's offline tier (engine_harness.py says how the engine is built)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .engine_harness import EngineFactory, EngineHarness, build_harness
from .fakeslurm import DaemonCrash, FakeClock, FakeSlurm

SLURM_COMMANDS = {"sbatch", "squeue", "sacct", "scancel", "sinfo", "scontrol", "sdiag", "sacctmgr"}


@pytest.fixture
def make_engine(tmp_path: Path) -> EngineFactory:
    """make_engine(config=None, *, fault=None, clock=None, slurm=None): an engine over a fresh
    database on tmp_path, a fake Slurm and a fake clock; `config` is merged over BASE_CONFIG."""

    def build(
        config: dict[str, Any] | None = None,
        *,
        fault: str | None = None,
        clock: FakeClock | None = None,
        slurm: FakeSlurm | None = None,
    ) -> EngineHarness:
        return build_harness(tmp_path, config, fault=fault, clock=clock, slurm=slurm)

    return build


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This tier needs no Slurm: a Slurm command started as a process fails the test. And a fault
    point's SIGKILL of this very process raises DaemonCrash instead of ending pytest."""
    real_popen_init = subprocess.Popen.__init__
    real_kill = os.kill

    def popen_init(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        program = os.path.basename(os.fsdecode(argv[0])) if argv else ""
        if program in SLURM_COMMANDS:
            raise AssertionError(f"the offline tier ran {program}: {args!r}")
        real_popen_init(self, args, *a, **kw)

    def kill(pid: int, sig: int) -> None:
        if pid == os.getpid() and sig == signal.SIGKILL:
            raise DaemonCrash("fault point: the daemon would have died here (SIGKILL)")
        real_kill(pid, sig)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen_init)
    monkeypatch.setattr(os, "kill", kill)
    yield
