"""`hpcops submit` from a laptop against `ssh host sbatch script` of the same rendered script.
Target: at most 1.3x.

The laptop is a Unix user of its own with its own key, known_hosts and client config
(`hpcops --remote bench submit`: paramiko to the dev sshd, `hpcops api` there, the daemon's
socket). The daemon reaches Slurm over SSH too (slurm.transport: ssh), as a lab's server off
the cluster would. Each round, in turn:
  hpcops  from the CLI's start until the daemon's sbatch has returned the job id (the run's
          submitted_at in the daemon's database), and the CLI's own wall time;
  raw     `ssh -p 2222 host sbatch --parsable SCRIPT` (OpenSSH, a new connection, as a user
          would type it) of a copy of the script hpcops rendered for that run.
The spec has no `code:` block. Slurm keeps the jobs pending (they never run).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.benchmarks.common import REPO, ensure_user, write_result
from tests.benchmarks.ssh_setup import (
    PORT,
    SSH_BENCH_USER,
    authorize,
    jobs_held_pending,
    ssh_daemon,
    sshd_known_hosts,
    user_key,
)

LAPTOP = "hpcopssshlaptop"
ROUNDS = 15


def _laptop(*argv: str) -> list[str]:
    return ["runuser", "-u", LAPTOP, "--", *argv]


def _queued_and_submitted_at(
    database: Path, run_id: int, timeout_s: float = 30
) -> tuple[float, float]:
    """When the daemon queued the run, and when its sbatch (over SSH) returned the job id."""
    deadline = time.monotonic() + timeout_s
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT created_at, submitted_at FROM run WHERE id = ?", (run_id,)
            ).fetchone()
            if row and row[1] is not None:
                return float(row[0]), float(row[1])
            time.sleep(0.005)
    raise TimeoutError(f"run {run_id} not submitted within {timeout_s} s")


def _timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd="/tmp")
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr}")
    return elapsed, proc.stdout


def main() -> None:
    ensure_user(LAPTOP)
    daemon = ssh_daemon(max_active=1000, pending_window=1000)
    laptop_home = Path(f"~{LAPTOP}").expanduser()
    key = user_key(LAPTOP, "id_ed25519")
    authorize(SSH_BENCH_USER, key)  # the laptop logs in as the daemon's own account
    (laptop_home / ".ssh" / "known_hosts").write_text(sshd_known_hosts() + "\n")
    config_dir = laptop_home / ".config" / "hpcops"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.yaml").write_text(
        json.dumps(
            {
                "default_remote": "bench",
                "remotes": {
                    "bench": {
                        "host": "127.0.0.1",
                        "port": PORT,
                        "user": SSH_BENCH_USER,
                        "command": [str(REPO / ".venv" / "bin" / "hpcops")],
                        "home": str(daemon.home),
                    }
                },
            }
        )
    )
    specs = laptop_home / "specs"
    shutil.rmtree(specs, ignore_errors=True)
    specs.mkdir()
    for i in range(ROUNDS + 1):
        (specs / f"s{i}.yaml").write_text(
            json.dumps(
                {
                    "name": f"sshsubmit-{i:03d}",
                    "experiment": "bench",
                    "command": "sleep 600",
                    "workdir": "/tmp",
                    "resources": {"time": "00:20:00"},
                }
            )
        )
    subprocess.run(["chown", "-R", f"{LAPTOP}:{LAPTOP}", str(laptop_home)], check=True)
    raw_dir = Path(f"~{SSH_BENCH_USER}").expanduser() / "raw-scripts"
    shutil.rmtree(raw_dir, ignore_errors=True)
    raw_dir.mkdir()
    shutil.chown(raw_dir, SSH_BENCH_USER, SSH_BENCH_USER)
    ssh = [
        "ssh",
        "-p",
        str(PORT),
        "-o",
        "BatchMode=yes",
        f"{SSH_BENCH_USER}@127.0.0.1",
    ]
    hpcops = [sys.executable, "-m", "hpcops", "--remote", "bench"]
    to_slurm, cli, raw, ssh_true, remote_ping, backend = [], [], [], [], [], []
    with jobs_held_pending(SSH_BENCH_USER):
        daemon.start()
        try:
            # Warm-up: first imports, partition cache, the daemon's connection.
            _timed(_laptop(*hpcops, "submit", str(specs / "s0.yaml")))
            _timed(_laptop(*ssh, "true"))
            for i in range(1, ROUNDS + 1):
                started = time.time()
                cli_s, out = _timed(_laptop(*hpcops, "submit", "--json", str(specs / f"s{i}.yaml")))
                run_id = int(json.loads(out)["id"])
                queued_at, submitted_at = _queued_and_submitted_at(
                    daemon.home / "hpcops.db", run_id
                )
                to_slurm.append(submitted_at - started)
                backend.append(submitted_at - queued_at)
                cli.append(cli_s)
                run_dir = Path(daemon.json("show", str(run_id))["run_dir"])
                copy = raw_dir / f"run-{run_id}.sbatch"
                shutil.copy(run_dir / "job.sbatch", copy)
                shutil.chown(copy, SSH_BENCH_USER, SSH_BENCH_USER)
                raw_s, job = _timed(_laptop(*ssh, "sbatch", "--parsable", str(copy)))
                assert job.strip().isdigit(), job
                raw.append(raw_s)
                ssh_true.append(_timed(_laptop(*ssh, "true"))[0])
                remote_ping.append(_timed(_laptop(*hpcops, "daemon", "status", "--json"))[0])
            python_s = statistics.median(
                _timed(_laptop(sys.executable, "-c", "import paramiko"))[0] for _ in range(5)
            )
        finally:
            daemon.stop()
    median = statistics.median
    write_result(
        "ssh_submit",
        {
            "rounds": ROUNDS,
            "hpcops_submit_until_in_slurm_s_median": round(median(to_slurm), 3),
            "hpcops_submit_until_in_slurm_s_max": round(max(to_slurm), 3),
            "hpcops_submit_cli_wall_s_median": round(median(cli), 3),
            "raw_ssh_sbatch_s_median": round(median(raw), 3),
            "raw_ssh_sbatch_s_max": round(max(raw), 3),
            "ratio": round(median(to_slurm) / median(raw), 2),
            "breakdown": {
                "ssh_true_s_median": round(median(ssh_true), 3),
                "hpcops_remote_daemon_status_s_median": round(median(remote_ping), 3),
                "daemon_queued_to_sbatch_returned_over_ssh_s_median": round(median(backend), 3),
                "laptop_python_import_paramiko_s_median": round(python_s, 3),
            },
            "setup": "laptop user -> dev sshd 127.0.0.1:2222 -> hpcops api -> daemon; the "
            "daemon -> the same sshd -> sbatch (slurm.transport: ssh); no code: block",
            "target": "ratio <= 1.3",
        },
    )


if __name__ == "__main__":
    main()
