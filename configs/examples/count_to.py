"""A training that needs more than one walltime, in miniature: it counts to a target, one step
at a time, and survives its time limit by checkpointing (configs/examples/checkpoint.yaml).

hpcops passes it the checkpoint signal (USR1) shortly before the job's time limit. It then saves
its count into $HPCOPS_CHECKPOINT_DIR, which every attempt of the run shares, and exits 0; the job
ends TIMEOUT and the run's next attempt starts here again and resumes from the saved count. The
attempt that reaches the target exits 0 before any signal, and the run is COMPLETED.

When the run is tracked, each step is logged as the metric `count` (step = the count), so the
MLflow record shows one series over all the attempts. Plain Python otherwise.
"""

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

warned = False


def on_signal(signum: int, frame: object) -> None:
    global warned
    warned = True


# First of all: the signal can come early in a short job, and unhandled USR1 would kill us.
signal.signal(signal.SIGUSR1, on_signal)


def param(name: str, default: str) -> str:
    return os.environ.get(f"HPCOPS_PARAM_{name.upper()}", default)


def save(path: Path, count: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{count}\n")
    tmp.replace(path)  # never half a checkpoint, even if the job is killed mid-write


def metric_logger() -> Callable[[int], object]:
    if not os.environ.get("MLFLOW_RUN_ID"):
        return lambda count: None
    import mlflow  # after the handler: importing it takes seconds

    return lambda count: mlflow.log_metric("count", count, step=count)


def main() -> int:
    target = int(param("target", "60"))
    step_s = float(param("step_s", "1"))
    attempt = os.environ.get("HPCOPS_ATTEMPT", "1")
    checkpoint = Path(os.environ.get("HPCOPS_CHECKPOINT_DIR", ".")) / "count.txt"
    count = int(checkpoint.read_text()) if checkpoint.exists() else 0
    print(f"attempt {attempt}: starting at {count}, counting to {target}", flush=True)
    log = metric_logger()
    while count < target:
        if warned:
            save(checkpoint, count)
            print(f"attempt {attempt}: got the checkpoint signal; saved {count}", flush=True)
            return 0
        time.sleep(step_s)
        count += 1
        log(count)
    save(checkpoint, count)  # a later attempt (hpcops retry) finds the work done
    print(f"attempt {attempt}: reached {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
