"""`hpcops --help` wall time (median of 20 runs, after one warm-up). Target: under 0.3 s. The
baseline is the bare interpreter start in the same process, so the figure is hpcops' own cost.

The everyday calls on the login node too (issue 16): `validate`, `submit` and `ls` of a small
spec against a running daemon, each call's wall time and the CPU time of the client process
(user + system, from the children's rusage), medians of 20. The daemon holds every run in its
queue (lab quota 0), so nothing reaches Slurm.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time

from tests.benchmarks.common import UserDaemon, write_result, write_specs

RUNS = 20


def _median_s(argv: list[str]) -> float:
    return _medians(argv)[0]


def _medians(argv: list[str]) -> tuple[float, float]:
    """(wall, client CPU) medians in seconds, after one warm-up call."""
    subprocess.run(argv, capture_output=True, check=True, cwd="/tmp")
    walls, cpus = [], []
    for _ in range(RUNS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, cwd="/tmp")
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    help_s = _median_s([sys.executable, "-m", "hpcops", "--help"])
    python_s, python_cpu_s = _medians([sys.executable, "-c", "pass"])
    figures = {
        "hpcops_help_median_s": round(help_s, 3),
        "bare_python_median_s": round(python_s, 3),
        "bare_python_cpu_median_s": round(python_cpu_s, 3),
        "ratio": round(help_s / python_s, 1),
    }
    daemon = UserDaemon(
        "root",
        {"lab": "bench", "quotas": {"lab": {"jobs": 0}}, "slurm": {"account": "lab"}},
    )
    daemon.start()
    try:
        [spec] = write_specs(daemon.home / "specs", 1, "true", "root")
        for name, args in (
            ("validate", ["validate", str(spec)]),
            ("submit", ["submit", str(spec)]),
            ("ls", ["ls"]),
        ):
            wall_s, cpu_s = _medians(daemon.argv(*args))
            figures[f"{name}_median_s"] = round(wall_s, 3)
            figures[f"{name}_client_cpu_median_s"] = round(cpu_s, 3)
    finally:
        daemon.stop_daemon()
    figures["target"] = (
        "hpcops --help under 0.3 s; validate, submit and ls import no pydantic (issue 16: "
        "validate cost 0.14 s CPU, 0.13 s of it pydantic)"
    )
    write_result("cli", figures)


if __name__ == "__main__":
    main()
