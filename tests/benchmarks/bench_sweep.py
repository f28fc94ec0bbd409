"""A 1,000-point sweep against 1,000 single specs through `hpcops submit` and 1,000 raw `sbatch`
calls, in one run (issue 13). For each: slurmctld RPCs (sdiag, the bench user's) and wall time
until every job is in Slurm; for the two hpcops runs also the RPCs per minute and the daemon's
CPU while the jobs run. Target: the sweep costs at most 1 sbatch RPC per release batch (an
array), not one per point.

The jobs are `true` in the low QOS, so other users' jobs on the shared dev cluster preempt them,
and each run's jobs are cancelled by id before the next starts. Progress is read from the
daemon's database (read-only) rather than through its API, so that watching costs the daemon
nothing. Tracking is off in both daemons: MLflow's load is bench_tracking's subject.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.common import (
    BENCH_USER,
    UserDaemon,
    ensure_user,
    reset_rpcs,
    rpcs_by_user,
    sbatch_as_bench_user,
    write_result,
    write_specs,
)

POINTS = 1000
RUNNING_WINDOW_S = 60.0
JOB = {"command": "true", "resources": {"qos": "low", "time": "00:05:00"}}


class SweepDaemon(UserDaemon):
    """A bench daemon whose jobs are cancelled by id (never `scancel -u`: the bench user's other
    jobs are not this benchmark's business)."""

    def stop(self) -> None:
        self.stop_daemon()

    def submitted(self) -> tuple[int, int, set[str]]:
        """Runs, runs with a Slurm job, and the Slurm job ids (array ids for array tasks), read
        from the daemon's database without asking the daemon."""
        with sqlite3.connect(f"file:{self.home / 'hpcops.db'}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT slurm_job_id FROM run").fetchall()
        jobs = {job.split("_")[0] for (job,) in rows if job}
        return len(rows), sum(1 for (job,) in rows if job), jobs


def _submit_rpcs() -> int:
    """REQUEST_SUBMIT_BATCH_JOB RPCs since the last reset, of all users (sdiag counts by type
    only for the whole cluster): the sbatch calls, when nobody else submits meanwhile."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"REQUEST_SUBMIT_BATCH_JOB\s+\(\s*\d+\)\s+count:(\d+)", out)
    return int(match.group(1)) if match else 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cancel(job_ids: set[str] | list[str]) -> None:
    ids = sorted(job_ids)
    for i in range(0, len(ids), 500):
        subprocess.run(["scancel", *ids[i : i + 500]], check=False)


def _config() -> dict[str, Any]:
    return {
        "lab": "bench",
        "max_active": POINTS,
        "pending_window": POINTS,  # all 1,000 go to Slurm at once: that is what is measured
        "slurm": {"account": "lab", "default_partition": "cpu"},
        "daemon": {"tick_interval_s": 1.0},
        "tracking": {"enabled": False},
    }


def _through_hpcops(specs: list[Path], daemon: SweepDaemon) -> dict[str, Any]:
    """Submit, wait until every run has a Slurm job, then watch a window while they run."""
    pid = daemon.pid()
    reset_rpcs()
    cpu = _cpu_s(pid)
    started = time.monotonic()
    daemon.cli("submit", *map(str, specs))

    def all_in_slurm() -> bool:
        runs, with_job, _ = daemon.submitted()
        return runs == with_job == POINTS

    daemon.wait(all_in_slurm, 900, "every run in Slurm")
    in_slurm_s = time.monotonic() - started
    submit_rpcs = rpcs_by_user().get(BENCH_USER, 0)
    sbatch_rpcs = _submit_rpcs()
    submit_cpu = _cpu_s(pid) - cpu
    batches = len(daemon.submitted()[2])

    reset_rpcs()
    cpu = _cpu_s(pid)
    time.sleep(RUNNING_WINDOW_S)
    running_rpcs = rpcs_by_user().get(BENCH_USER, 0)
    running_cpu = _cpu_s(pid) - cpu
    return {
        "slurm_jobs": batches,
        "rpcs_until_all_in_slurm": submit_rpcs,
        "submit_rpcs_until_all_in_slurm": sbatch_rpcs,
        "s_until_all_in_slurm": round(in_slurm_s, 2),
        "daemon_cpu_s_until_all_in_slurm": round(submit_cpu, 2),
        "rpcs_per_min_while_running": round(running_rpcs / (RUNNING_WINDOW_S / 60), 1),
        "daemon_cpu_percent_while_running": round(100 * running_cpu / RUNNING_WINDOW_S, 2),
    }


def _run_arm(name: str, write: Any) -> tuple[dict[str, Any], SweepDaemon]:
    daemon = SweepDaemon(BENCH_USER, _config())
    daemon.start()
    try:
        figures = _through_hpcops(write(daemon), daemon)
    finally:
        jobs = daemon.submitted()[2]
        daemon.stop()
        _cancel(jobs)
    print(f"{name}: {json.dumps(figures)}")
    return figures, daemon


def _sweep_spec(daemon: SweepDaemon) -> list[Path]:
    path = daemon.home / "sweep.yaml"
    spec = {
        "name": "bench-sweep",
        "experiment": "bench",
        **JOB,
        "sweep": {"grid": {"i": list(range(POINTS))}},
    }
    path.write_text(json.dumps(spec))
    subprocess.run(["chown", f"{BENCH_USER}:{BENCH_USER}", str(path)], check=True)
    return [path]


def _single_specs(daemon: SweepDaemon) -> list[Path]:
    return write_specs(
        daemon.home / "specs", POINTS, str(JOB["command"]), BENCH_USER, resources=JOB["resources"]
    )


def _raw_sbatch(scripts: list[Path]) -> dict[str, Any]:
    ids: list[str] = []
    reset_rpcs()
    started = time.monotonic()
    try:
        for script in scripts:
            ids.append(sbatch_as_bench_user(script, cwd="/tmp"))
        raw_s = time.monotonic() - started
        rpcs = rpcs_by_user().get(BENCH_USER, 0)
        sbatch_rpcs = _submit_rpcs()
    finally:
        _cancel(ids)
    return {
        "slurm_jobs": len(ids),
        "rpcs_until_all_in_slurm": rpcs,
        "submit_rpcs_until_all_in_slurm": sbatch_rpcs,
        "s_until_all_in_slurm": round(raw_s, 2),
    }


def main() -> None:
    ensure_user()
    sweep, _ = _run_arm("sweep", _sweep_spec)
    singles, singles_daemon = _run_arm("singles", _single_specs)
    # The same scripts the daemon rendered for the singles, submitted by hand.
    copies = singles_daemon.home / "raw"
    copies.mkdir()
    scripts = []
    for script in sorted((singles_daemon.home / "runs").glob("run-*/job.sbatch")):
        target = copies / f"{script.parent.name}.sbatch"
        target.write_text(script.read_text())
        scripts.append(target)
    subprocess.run(["chown", "-R", f"{BENCH_USER}:{BENCH_USER}", str(copies)], check=True)
    raw = _raw_sbatch(scripts)
    write_result(
        "sweep",
        {
            "points": POINTS,
            "running_window_s": RUNNING_WINDOW_S,
            "sweep": sweep,
            "single_specs": singles,
            "raw_sbatch": raw,
            "sweep_submit_rpcs_per_release_batch": round(
                sweep["submit_rpcs_until_all_in_slurm"] / max(sweep["slurm_jobs"], 1), 2
            ),
            "rpcs_singles_over_sweep": round(
                singles["rpcs_until_all_in_slurm"] / max(sweep["rpcs_until_all_in_slurm"], 1), 1
            ),
            "s_singles_over_sweep": round(
                singles["s_until_all_in_slurm"] / max(sweep["s_until_all_in_slurm"], 0.01), 1
            ),
            "note": "rpcs_*: the bench user's (sdiag by user): sbatch plus the daemon's squeue "
            "polls over the same time; submit_rpcs_*: REQUEST_SUBMIT_BATCH_JOB of all users "
            "(sdiag by type); a release batch is one Slurm job (an array for the sweep); jobs "
            "are `true` in QOS low; tracking off in both daemons",
            "target": "the sweep: at most 1 sbatch RPC per release batch (not per point)",
        },
    )


if __name__ == "__main__":
    main()
