"""The training that test_retries.py runs as a Slurm job: it counts, one step a second, logs each
step as an MLflow metric (step=i) into the run hpcops made for it, and keeps its counter in
$HPCOPS_CHECKPOINT_DIR, which every attempt of the run shares. Standard library and the MLflow
client only; run by the repo's .venv python.

    retry_job.py EVENTS TARGET chunk   works at most CHUNK steps (--chunk, default 5) an attempt,
                                       then waits for the checkpoint signal (USR1), saves its
                                       counter and exits 0 (hpcops' job script then waits for
                                       the limit): a training that needs TARGET / CHUNK walltimes
    retry_job.py EVENTS TARGET steady  saves its counter after every step (a preempted or lost
                                       attempt resumes where it was) and ends at TARGET

Every attempt appends what it did to EVENTS (JSON lines, a file of the test's own), so the test
can follow the job without knowing where hpcops keeps its logs.

Why a fixed chunk: slurmctld signals and ends jobs on a 30 s timer (docs/notes-slurm.md;
test_retries.py measures it), so the signal arrives anywhere in a 30 s window. Working a fixed
chunk that fits before the earliest the signal can come, then waiting for it, makes the number
of attempts the same on every run of the test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# First of all, before anything slow: a signal that arrives before its handler is set would
# kill the process (Python's default for USR1).
signalled: list[float] = []
signal.signal(signal.SIGUSR1, lambda _sig, _frame: signalled.append(time.time()))
STARTED = time.time()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("events", type=Path)
    parser.add_argument("target", type=int)
    parser.add_argument("mode", choices=["chunk", "steady"])
    parser.add_argument("--chunk", type=int, default=5)
    args = parser.parse_args()

    def event(kind: str, **fields: Any) -> None:
        record = {"event": kind, "t": time.time(), "job": os.environ.get("SLURM_JOB_ID")}
        with args.events.open("a") as out:
            out.write(json.dumps({**record, **fields}) + "\n")
        print(kind, json.dumps(fields), flush=True)

    checkpoint = Path(os.environ["HPCOPS_CHECKPOINT_DIR"])
    counter_file = checkpoint / "counter"
    counter = int(counter_file.read_text()) if counter_file.exists() else 0

    def save() -> None:
        tmp = counter_file.with_suffix(".tmp")
        tmp.write_text(f"{counter}\n")
        tmp.replace(counter_file)

    event(
        "start",
        attempt=os.environ.get("HPCOPS_ATTEMPT"),
        restart=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        resume_at=counter,
        checkpoint_dir=str(checkpoint),
        mlflow_run_id=os.environ.get("MLFLOW_RUN_ID"),
    )
    from mlflow.tracking import MlflowClient  # slow to import: after the handler and the event

    client = MlflowClient()
    run_id = os.environ["MLFLOW_RUN_ID"]
    worked = 0
    while counter < args.target and not signalled:
        if args.mode == "chunk" and worked == args.chunk:
            break
        client.log_metric(run_id, "count", float(counter), step=counter)
        event("step", i=counter)
        counter += 1
        worked += 1
        if args.mode == "steady":
            save()
        time.sleep(1)
    if counter >= args.target:
        save()
        event("done", counter=counter)
        return 0
    # A chunk's work is done: wait for the warning, save, and exit 0. The job script then
    # waits for the time limit, so that Slurm still ends the job TIMEOUT.
    while not signalled:
        time.sleep(0.2)
    save()
    event("checkpoint", counter=counter, signal_at=signalled[0], started_at=STARTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
