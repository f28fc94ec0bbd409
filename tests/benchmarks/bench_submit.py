"""200 specs through `hpcops submit` until every run has a Slurm job, against 200 raw `sbatch`
calls of the same rendered scripts, in the same process. Target: at most 1.5x.

The clock stops when Slurm holds all 200 jobs, asked with `squeue` (one light RPC, about 11 ms of
CPU) every 0.1 s; `hpcops ls --all --json` then confirms that the daemon recorded each job id.
Polling with `hpcops ls` itself (about 0.1 s of CPU a call for 200 runs, five times a second)
would take half of the two cores from the daemon it measures."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.benchmarks.common import (
    BENCH_USER,
    UserDaemon,
    ensure_user,
    sbatch_as_bench_user,
    write_result,
    write_specs,
)

JOBS = 200


def _bench_jobs() -> int:
    """How many jobs Slurm holds of the bench user (nothing else runs as that user)."""
    return len(
        subprocess.run(
            ["squeue", "--noheader", "--user", BENCH_USER, "--format", "%i"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )


def _wait_for_jobs_in_slurm(count: int, timeout_s: float, *, exactly: bool = False) -> None:
    """Until Slurm holds `count` jobs of the bench user (at least, or `exactly`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = _bench_jobs()
        if held == count or (held >= count and not exactly):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{held} jobs in Slurm, not {count}, after {timeout_s} s")
        time.sleep(0.1)


def main() -> None:
    ensure_user()
    daemon = UserDaemon(
        BENCH_USER,
        {
            "lab": "bench",
            "max_active": JOBS,
            "pending_window": JOBS,  # all 200 in Slurm at once: that is what is measured
            "slurm": {"account": "lab", "default_partition": "cpu"},
            "daemon": {"tick_interval_s": 1.0},
        },
    )
    daemon.start()
    scripts: list[Path] = []
    try:
        specs = write_specs(daemon.home / "specs", JOBS, "sleep 900", BENCH_USER)
        _wait_for_jobs_in_slurm(0, timeout_s=120, exactly=True)
        started = time.monotonic()
        daemon.cli("submit", *map(str, specs))
        _wait_for_jobs_in_slurm(JOBS, timeout_s=600)
        hpcops_s = time.monotonic() - started
        daemon.wait(
            lambda: all(r["slurm_job_id"] for r in daemon.json("ls", "--all")),
            60,
            "every run's job id recorded",
        )
        copies = daemon.home / "raw"
        copies.mkdir()
        for script in sorted((daemon.home / "runs").glob("run-*/job.sbatch")):
            target = copies / f"{script.parent.name}.sbatch"
            shutil.copy(script, target)
            scripts.append(target)
        subprocess.run(["chown", "-R", f"{BENCH_USER}:{BENCH_USER}", str(copies)], check=True)
    finally:
        daemon.stop()
    # Both measured on a quiet slurmctld: the jobs just cancelled are out of the queue first,
    # as none were queued before hpcops' submit (the raw calls would otherwise share
    # slurmctld with their cancellation).
    _wait_for_jobs_in_slurm(0, timeout_s=120, exactly=True)
    raw_ids = []
    started = time.monotonic()
    for script in scripts:
        raw_ids.append(sbatch_as_bench_user(script))
    raw_s = time.monotonic() - started
    for i in range(0, len(raw_ids), 500):
        subprocess.run(["scancel", *raw_ids[i : i + 500]], check=False)
    write_result(
        "submit",
        {
            "jobs": JOBS,
            "hpcops_submit_to_all_in_slurm_s": round(hpcops_s, 2),
            "raw_sbatch_s": round(raw_s, 2),
            "ratio": round(hpcops_s / raw_s, 2),
            "note": "raw sbatch runs as the bench user through runuser, as hpcops does",
            "target": "ratio <= 1.5",
        },
    )


if __name__ == "__main__":
    main()
