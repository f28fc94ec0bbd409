"""Submission burst: 1,000 `hpcops submit` calls from 4 Unix users at once (250 each, one CLI
process per call, as scripts and people make them). All must be accepted and none lost. The
baseline, in the same process and the same shape: 1,000 `sbatch --hold` calls by the same users.
The lab quota holds every run in hpcops' queue, so what is measured is acceptance, not Slurm.

Each call runs the installed `hpcops` script, as a user's shell or script does (`python -m
hpcops` pays runpy's imports on top, about 10 ms of CPU a call on this machine).

The daemon's own share (issue 16): its process's CPU time (user + system, /proc/PID/stat) over
the burst, per submit, against the burst's wall time per submit; the rest is the CLI processes
(Python, imports, the spec read), which the 2 cores share with it. Each queued run's MLflow
record is made by the daemon's tracking thread, which may still be at it when the last call
returns: the daemon's CPU is measured again once every run has its record, and that wait is
reported too."""

from __future__ import annotations

import grp
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.benchmarks.common import (
    BENCH_USER,
    UserDaemon,
    ensure_user,
    write_result,
    write_specs,
)

GROUP = "hpcopsbenchlab"
USERS = [f"hpcopsb{i}" for i in range(1, 5)]
CALLS_PER_USER = 250


def _ensure_lab() -> None:
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
    for user in [BENCH_USER, *USERS]:
        ensure_user(user)
        subprocess.run(["usermod", "--append", "--groups", GROUP, user], check=True)


def _cpu_s(pid: int) -> float:
    """A process's CPU time so far, user + system (proc(5): fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _burst(call: Callable[[str, int], None]) -> tuple[float, list[str]]:
    errors: list[str] = []

    def worker(user: str) -> None:
        for i in range(CALLS_PER_USER):
            try:
                call(user, i)
            except Exception as exc:
                errors.append(f"{user} #{i}: {exc}")

    threads = [threading.Thread(target=worker, args=(u,)) for u in USERS]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started, errors


def main() -> None:
    _ensure_lab()
    daemon = UserDaemon(
        BENCH_USER,
        {
            "lab": "bench",
            "max_active": 10,
            "quotas": {"lab": {"jobs": 0}},
            "access": {"socket_group": GROUP, "members_group": GROUP},
            "slurm": {"account": "lab", "default_partition": "cpu"},
        },
    )
    daemon.start()
    specs = {
        u: write_specs(daemon.home.parent / f"{daemon.home.name}-{u}", 1, "true", u)[0]
        for u in USERS
    }

    script = Path(sys.executable).parent / "hpcops"

    def hpcops_submit(user: str, _i: int) -> None:
        argv = [
            str(script),
            "--home",
            str(daemon.home),
            "submit",
            str(specs[user]),
        ]
        subprocess.run(
            ["runuser", "-u", user, "--", *argv], check=True, capture_output=True, cwd="/tmp"
        )

    def raw_sbatch(user: str, i: int) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                user,
                "--",
                "sbatch",
                "--hold",
                "--parsable",
                "-A",
                "lab",
                "-J",
                f"burst-baseline-{i}",
                "-o",
                "/dev/null",
                "--wrap",
                "true",
            ],
            check=True,
            capture_output=True,
            cwd="/tmp",
        )

    try:
        cpu_before = _cpu_s(daemon.pid())
        hpcops_s, hpcops_errors = _burst(hpcops_submit)
        daemon_cpu_s = _cpu_s(daemon.pid()) - cpu_before
        recorded_after_s = daemon.wait(
            lambda: all(r["mlflow_run_id"] for r in daemon.json("ls", "--all")),
            timeout_s=300,
            what="every run's MLflow record",
        )
        recorded_cpu_s = _cpu_s(daemon.pid()) - cpu_before
        runs = daemon.json("ls", "--all")
        owners = {u: sum(r["owner"] == u for r in runs) for u in USERS}
        ids = {r["id"] for r in runs}
    finally:
        daemon.stop()
    raw_s, raw_errors = _burst(raw_sbatch)
    for user in USERS:  # these users exist for this benchmark only
        subprocess.run(["scancel", "-u", user], check=False)
    total = len(USERS) * CALLS_PER_USER
    write_result(
        "burst",
        {
            "calls": total,
            "users": len(USERS),
            "accepted_runs": len(ids),
            "runs_per_user": owners,
            "lost": total - len(ids),
            "errors": hpcops_errors[:5],
            "hpcops_submit_s": round(hpcops_s, 1),
            "hpcops_submits_per_s": round(total / hpcops_s, 1),
            "raw_sbatch_s": round(raw_s, 1),
            "raw_sbatch_per_s": round(total / raw_s, 1),
            "raw_errors": raw_errors[:5],
            "ratio": round(hpcops_s / raw_s, 2),
            "daemon_cpu_s": round(daemon_cpu_s, 2),
            "daemon_cpu_ms_per_submit": round(daemon_cpu_s / total * 1000, 1),
            "wall_ms_per_submit": round(hpcops_s / total * 1000, 1),
            "daemon_cpu_share": round(daemon_cpu_s / (hpcops_s * (os.cpu_count() or 1)), 2),
            "records_done_after_burst_s": round(recorded_after_s, 1),
            "daemon_cpu_ms_per_submit_with_records": round(recorded_cpu_s / total * 1000, 1),
            "target": "all accepted, none lost, at least 25 submits/s; the daemon's share named",
        },
    )


if __name__ == "__main__":
    main()
