"""The one back-off: how long to wait after a number of failures in a row.

Every retry loop in hpcops (Slurm unreachable, sacct not final yet, a full Slurm limit, an SSH
reconnect, an MLflow refusal) waits the same way: `first_s` after the first failure, doubled for
each failure after it, never more than `max_s`. The callers count failures; the arithmetic lives
here so that the loops cannot drift apart again (there were five formulas before).
"""

from __future__ import annotations

# 2**40 seconds is longer than any cap; bounding the exponent keeps the float finite.
_MAX_DOUBLINGS = 40


def backoff_s(failures: int, *, first_s: float, max_s: float) -> float:
    """The wait after `failures` failures in a row (0 or fewer: no wait)."""
    if failures <= 0:
        return 0.0
    doubled = first_s * 2.0 ** min(failures - 1, _MAX_DOUBLINGS)
    return min(doubled, max(max_s, first_s))
