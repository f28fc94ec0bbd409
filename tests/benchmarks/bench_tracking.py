"""MLflow records, measured against a real `mlflow server` (one uvicorn worker, its access log).

1. HTTP requests for hpcops' own part of one run's record (creation, submission, closing), for
   a job that logs nothing itself, so every request in the server's access log is hpcops'.
   Target: at most 10, whatever the number of Slurm metrics. The first run of an experiment
   also looks the experiment up (once per experiment per daemon); the figures say both.
2. Relay: the delay from a metric written on scratch (its own timestamp) to it appearing on the
   server. Target: under one poll interval (relay_interval_s).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from tests.benchmarks.common import UserDaemon, write_result, write_specs
from tests.integration.mlflow_server import MlflowServer, free_port

RELAY_INTERVAL_S = 2.0
RELAY_POINTS = 20


def _stop(daemon: UserDaemon) -> None:
    """Stop the daemon and cancel only its own live jobs: it runs as root, and `scancel -u
    root` (UserDaemon.stop) would cancel everyone's root jobs on the shared dev cluster."""
    import subprocess

    runs = daemon.json("ls", "--all")
    daemon.cli("daemon", "stop")
    live = [r["slurm_job_id"] for r in runs if r["slurm_job_id"] and r["state"] in _LIVE]
    if live:
        subprocess.run(["scancel", *live], check=False)
    shutil.rmtree(daemon.home, ignore_errors=True)


_LIVE = {"SUBMITTING", "PENDING", "RUNNING"}


def _recorded(daemon: UserDaemon, run: int) -> bool:
    data = daemon.json("show", str(run))
    return (
        bool(data["mlflow_run_id"])
        and not data["tracking_pending"]
        and data["state"]
        in {
            "COMPLETED",
            "FAILED",
        }
    )


def _requests_for_one_run(server: MlflowServer, daemon: UserDaemon, spec: Path) -> list[str]:
    before = len(server.requests())
    run = int(daemon.cli("submit", str(spec)).strip())
    daemon.wait(lambda: _recorded(daemon, run), 180, f"run {run} recorded")
    time.sleep(1.5)  # anything still in flight lands in the log
    return server.requests()[before:]


def _kind(request_line: str) -> str:
    method, path, _ = request_line.split(" ", 2)
    path = path.split("?", 1)[0]
    if "/mlflow-artifacts/artifacts/" in path:
        return f"{method} artifact {path.rsplit('/', 1)[-1]}"
    return f"{method} {path.removeprefix('/api/2.0/mlflow/')}"


def requests_per_record(server: MlflowServer) -> dict[str, Any]:
    daemon = UserDaemon(
        "root",
        {
            "lab": "bench",
            "slurm": {"account": "lab", "default_partition": "cpu"},
            "daemon": {"tick_interval_s": 0.5},
            "tracking": {"tracking_uri": server.uri},
        },
    )
    daemon.start()
    try:
        specs = write_specs(
            daemon.home / "specs",
            2,
            "echo hello; echo oops >&2",
            "root",
            params={"lr": 0.1, "epochs": 3},
        )
        first = _requests_for_one_run(server, daemon, specs[0])
        second = _requests_for_one_run(server, daemon, specs[1])
    finally:
        _stop(daemon)
    return {
        "first_run_of_an_experiment": len(first),
        "later_runs": len(second),
        "target": 10,
        "later_run_requests": dict(Counter(_kind(r) for r in second)),
        "first_run_extra": sorted(
            (Counter(_kind(r) for r in first) - Counter(_kind(r) for r in second)).elements()
        ),
    }


def relay_delay(server: MlflowServer) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    daemon = UserDaemon(
        "root",
        {
            "lab": "bench",
            "slurm": {"account": "lab", "default_partition": "cpu"},
            "daemon": {"tick_interval_s": 0.5},
            "tracking": {
                "tracking_uri": server.uri,
                "mode": "relay",
                "relay_interval_s": RELAY_INTERVAL_S,
            },
        },
    )
    daemon.start()
    logger = (
        f"{sys.executable} -c 'import mlflow, time\n"
        f"for step in range({RELAY_POINTS}):\n"
        '    mlflow.log_metric("tick", step, step=step)\n'
        "    time.sleep(0.5)'"
    )
    client = MlflowClient(server.uri)
    seen_at: dict[int, float] = {}
    written_at: dict[int, float] = {}
    try:
        [spec] = write_specs(daemon.home / "specs", 1, logger, "root")
        run = int(daemon.cli("submit", str(spec)).strip())
        daemon.wait(lambda: bool(daemon.json("show", str(run))["mlflow_run_id"]), 120, "record")
        mlflow_id = daemon.json("show", str(run))["mlflow_run_id"]
        deadline = time.monotonic() + 120
        while len(seen_at) < RELAY_POINTS and time.monotonic() < deadline:
            now = time.time()
            for metric in client.get_metric_history(mlflow_id, "tick"):
                if metric.step not in seen_at:
                    seen_at[metric.step] = now
                    written_at[metric.step] = metric.timestamp / 1000
            time.sleep(0.1)
    finally:
        _stop(daemon)
    delays = [seen_at[s] - written_at[s] for s in sorted(seen_at)]
    return {
        "relay_interval_s": RELAY_INTERVAL_S,
        "points": len(delays),
        "delay_median_s": round(statistics.median(delays), 3),
        "delay_max_s": round(max(delays), 3),
        "target_s": RELAY_INTERVAL_S,
        "note": "from the metric's own timestamp (written on scratch) to the moment a poll of "
        "the server every 0.1 s first saw it",
    }


def main() -> None:
    server = MlflowServer(Path("/tmp") / f"hpcops-bench-mlflow-{uuid.uuid4().hex[:8]}", free_port())
    server.start()
    try:
        figures = {"requests": requests_per_record(server), "relay": relay_delay(server)}
    finally:
        server.stop()
        shutil.rmtree(server.state_dir, ignore_errors=True)
    write_result("tracking", figures)


if __name__ == "__main__":
    main()
