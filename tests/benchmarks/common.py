"""Shared by the benchmarks: results files, slurmctld RPC counts, daemons run as a given user.

Benchmarks are not timed tests: they write figures to tests/benchmarks/results/NAME.json with the
date and the machine, and compare against a baseline run in the same process, as a ratio.
"""

from __future__ import annotations

import json
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "benchmarks" / "results"
BENCH_USER = "hpcopsbench"


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    slurm = subprocess.run(["sbatch", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "slurm": slurm,
    }


def write_result(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": figures,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["figures"], indent=2))
    print(f"written to {path.relative_to(REPO)}")
    return path


def ensure_user(name: str = BENCH_USER) -> pwd.struct_passwd:
    """A real non-root Unix user with a Slurm association: slurmd's own RPCs are counted under
    root by sdiag, so the orchestrator is measured as someone else (docs/notes-slurm.md)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        entry = pwd.getpwnam(name)
    subprocess.run(
        [str(REPO / "scripts" / "dev-cluster"), "add-user", name],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return entry


def rpcs_by_user() -> dict[str, int]:
    """slurmctld RPC counts by user since the last `sdiag --reset`."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    section = out.split("Remote Procedure Call statistics by user", 1)[1]
    counts = {}
    for match in re.finditer(r"^\s+(\S+)\s+\(\s*\d+\)\s+count:(\d+)", section, re.MULTILINE):
        counts[match.group(1)] = counts.get(match.group(1), 0) + int(match.group(2))
    return counts


def reset_rpcs() -> None:
    subprocess.run(["sdiag", "--reset"], check=True, stdout=subprocess.DEVNULL)


@dataclass
class UserDaemon:
    """An hpcops daemon in a fresh home, running as `user`, driven through the real CLI."""

    user: str
    config: dict[str, Any]

    def __post_init__(self) -> None:
        self.home = Path("/tmp") / f"hpcops-bench-{uuid.uuid4().hex[:8]}"
        self.home.mkdir(mode=0o700)
        (self.home / "config.yaml").write_text(json.dumps(self.config))
        shutil.chown(self.home, self.user, self.user)
        shutil.chown(self.home / "config.yaml", self.user, self.user)

    def argv(self, *args: str) -> list[str]:
        base = [sys.executable, "-m", "hpcops", "--home", str(self.home), *args]
        if self.user == "root":
            return base
        return ["runuser", "-u", self.user, "--", *base]

    def cli(self, *args: str) -> str:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, cwd="/tmp")
        if proc.returncode != 0:
            raise RuntimeError(f"hpcops {' '.join(args)}: {proc.returncode}\n{proc.stderr}")
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json"))

    def start(self) -> None:
        self.cli("daemon", "start")

    def pid(self) -> int:
        return int((self.home / "daemon.pid").read_text())

    def stop_daemon(self) -> None:
        """Stop the daemon, by its pid file if the CLI fails; its jobs stay in Slurm."""
        try:
            self.cli("daemon", "stop")
        except RuntimeError:
            pid_file = self.home / "daemon.pid"
            if pid_file.exists():
                os.kill(int(pid_file.read_text()), 15)

    def stop(self) -> None:
        """Stop the daemon and cancel what it left in Slurm, even if the CLI fails."""
        self.stop_daemon()
        # Every job of the benchmark's own user, which nothing else runs as; never root's, which
        # would cancel other engineers' test jobs on the shared cluster.
        if self.user != "root":
            subprocess.run(["scancel", "-u", self.user], check=False)

    def wait(self, predicate: Any, timeout_s: float, what: str) -> float:
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{what}: not within {timeout_s} s")
            time.sleep(0.2)
        return time.monotonic() - started


def sbatch_as_bench_user(script: Path, cwd: str | None = None) -> str:
    """Raw `sbatch` of one script as the bench user, the baseline hpcops is compared with; the
    job id."""
    out = subprocess.run(
        ["runuser", "-u", BENCH_USER, "--", "sbatch", "--parsable", str(script)],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
    ).stdout
    return out.strip().split(";")[0]


def write_specs(directory: Path, count: int, command: str, owner: str, **extra: Any) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        spec = {"name": f"bench-{i:05d}", "experiment": "bench", "command": command, **extra}
        path = directory / f"spec-{i:05d}.yaml"
        path.write_text(json.dumps(spec))
        paths.append(path)
    if owner != "root":
        subprocess.run(["chown", "-R", f"{owner}:{owner}", str(directory)], check=True)
    return paths
