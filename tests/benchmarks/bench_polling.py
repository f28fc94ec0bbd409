"""slurmctld RPCs per minute while 200 jobs are in Slurm, and how soon hpcops knows a job ended.

Three pollers, each as the non-root bench user, counted by sdiag:
  per-job   `squeue -j ID` for every job every 5 s (what a naive tool does)
  batched   one `squeue -u USER` every 5 s
  hpcops    the daemon: markers + one squeue per squeue_interval_s + sacct for ended jobs
Target for hpcops: at most 12 RPCs/min for the lab whatever the number of jobs, completion known
within 5 s.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

from tests.benchmarks.common import (
    BENCH_USER,
    UserDaemon,
    ensure_user,
    reset_rpcs,
    rpcs_by_user,
    write_result,
    write_specs,
)

JOBS = 200
WINDOW_S = 120.0
BASELINE_WINDOW_S = 60.0


def _as_user(*argv: str) -> list[str]:
    return ["runuser", "-u", BENCH_USER, "--", *argv]


def baseline(job_ids: list[str], per_job: bool) -> float:
    reset_rpcs()
    started = time.monotonic()
    while time.monotonic() - started < BASELINE_WINDOW_S:
        round_started = time.monotonic()
        if per_job:
            for job_id in job_ids:
                subprocess.run(_as_user("squeue", "-h", "-j", job_id), capture_output=True)
        else:
            subprocess.run(_as_user("squeue", "-h", "-u", BENCH_USER), capture_output=True)
        time.sleep(max(0.0, 5.0 - (time.monotonic() - round_started)))
    minutes = (time.monotonic() - started) / 60
    return rpcs_by_user().get(BENCH_USER, 0) / minutes


def main() -> None:
    ensure_user()
    daemon = UserDaemon(
        BENCH_USER,
        {
            "lab": "bench",
            "max_active": JOBS,
            "pending_window": JOBS,  # all 200 in Slurm at once: that is what is measured
            "slurm": {"account": "lab", "default_partition": "cpu", "squeue_interval_s": 30},
            "daemon": {"tick_interval_s": 1.0},
        },
    )
    daemon.start()
    try:
        specs = write_specs(daemon.home / "specs", JOBS, "sleep 900", BENCH_USER)
        for i in range(0, JOBS, 100):
            daemon.cli("submit", *map(str, specs[i : i + 100]))
        daemon.wait(
            lambda: all(r["slurm_job_id"] for r in daemon.json("ls", "--all")),
            300,
            "all runs submitted",
        )
        time.sleep(5)  # let the release burst's sbatch RPCs settle out of the window
        reset_rpcs()
        time.sleep(WINDOW_S)
        hpcops_per_min = rpcs_by_user().get(BENCH_USER, 0) / (WINDOW_S / 60)
        job_ids = [r["slurm_job_id"] for r in daemon.json("ls", "--all")]
        per_job = baseline(job_ids, per_job=True)
        batched = baseline(job_ids, per_job=False)
        daemon.stop()

        # Latency: short jobs; compare the job's own end (exit marker) with when hpcops knew.
        daemon.start()
        quick = write_specs(daemon.home / "quick", 20, "sleep 3", BENCH_USER)
        ids = [r["id"] for r in json.loads(daemon.cli("submit", "--json", *map(str, quick)))]
        daemon.wait(
            lambda: all(r["ended_at"] for r in daemon.json("ls", "--all") if r["id"] in ids),
            300,
            "quick runs ended",
        )
        known_after = []
        for run_id in ids:
            show = daemon.json("show", str(run_id))
            marker = Path(show["run_dir"]) / "hpcops.exit"
            ended_epoch = float(marker.read_text().split()[1])
            history = daemon.json("history", str(run_id))
            final = next(e for e in history if e["to"] == show["state"] and e["from"] != e["to"])
            from datetime import datetime

            known = datetime.fromisoformat(final["at"].replace("Z", "+00:00")).timestamp()
            known_after.append(known - ended_epoch)
    finally:
        daemon.stop()
    write_result(
        "polling",
        {
            "jobs_in_slurm": JOBS,
            "window_s": WINDOW_S,
            "hpcops_rpcs_per_min": round(hpcops_per_min, 1),
            "per_job_squeue_every_5s_rpcs_per_min": round(per_job, 1),
            "batched_squeue_every_5s_rpcs_per_min": round(batched, 1),
            "ratio_per_job_over_hpcops": round(per_job / max(hpcops_per_min, 0.1), 1),
            "final_state_known_after_end_s_median": round(statistics.median(known_after), 2),
            "final_state_known_after_end_s_max": round(max(known_after), 2),
            "target": "<= 12 RPCs/min, completion known within 5 s",
        },
    )


if __name__ == "__main__":
    main()
