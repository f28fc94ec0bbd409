"""`hpcops --help` wall time (median of 20 runs, after one warm-up). Target: under 0.3 s. The
baseline is the bare interpreter start in the same process, so the figure is hpcops' own cost."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from tests.benchmarks.common import write_result

RUNS = 20


def _median_s(argv: list[str]) -> float:
    subprocess.run(argv, capture_output=True, check=True)
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    help_s = _median_s([sys.executable, "-m", "hpcops", "--help"])
    python_s = _median_s([sys.executable, "-c", "pass"])
    write_result(
        "cli",
        {
            "hpcops_help_median_s": round(help_s, 3),
            "bare_python_median_s": round(python_s, 3),
            "ratio": round(help_s / python_s, 1),
            "target": "hpcops --help under 0.3 s",
        },
    )


if __name__ == "__main__":
    main()
