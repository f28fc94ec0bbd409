"""200 specs through `hpcops submit` until every run has a Slurm job, against 200 raw `sbatch`
calls of the same rendered scripts, in the same process. Target: at most 1.5x."""

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
        started = time.monotonic()
        daemon.cli("submit", *map(str, specs))
        daemon.wait(
            lambda: all(r["slurm_job_id"] for r in daemon.json("ls", "--all")),
            600,
            "all runs submitted",
        )
        hpcops_s = time.monotonic() - started
        copies = daemon.home / "raw"
        copies.mkdir()
        for script in sorted((daemon.home / "runs").glob("run-*/job.sbatch")):
            target = copies / f"{script.parent.name}.sbatch"
            shutil.copy(script, target)
            scripts.append(target)
        subprocess.run(["chown", "-R", f"{BENCH_USER}:{BENCH_USER}", str(copies)], check=True)
    finally:
        daemon.stop()
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
