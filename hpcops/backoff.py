"""The one back-off: how long to wait after a number of failures in a row.

Every retry loop in hpcops (Slurm unreachable, sacct not final yet, a full Slurm limit, an SSH
reconnect, an MLflow refusal) waits the same way: `first_s` after the first failure, doubled for
each failure after it, never more than `max_s`. The callers count failures; the arithmetic lives
here so that the loops cannot drift apart again (there were five formulas before).
"""

from __future__ import annotations

from dataclasses import dataclass

# 2**40 seconds is longer than any cap; bounding the exponent keeps the float finite.
_MAX_DOUBLINGS = 40


def backoff_s(failures: int, *, first_s: float, max_s: float) -> float:
    """The wait after `failures` failures in a row (0 or fewer: no wait)."""
    if failures <= 0:
        return 0.0
    doubled = first_s * 2.0 ** min(failures - 1, _MAX_DOUBLINGS)
    return min(doubled, max(max_s, first_s))


@dataclass
class Health:
    """Whether a service (slurmctld, the MLflow server) answers, and when to try it again: one
    record and one rule for every outage hpcops rides out."""

    reachable: bool = True
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""
    since: float | None = None  # when it stopped answering

    def callable(self, now: float) -> bool:
        return self.reachable or now >= self.retry_at

    def failed(self, now: float, error: str, *, first_s: float, max_s: float) -> bool:
        """One more failure: back off. True when this failure begins an outage."""
        began = self.reachable
        self.failures += 1
        self.retry_at = now + backoff_s(self.failures, first_s=first_s, max_s=max_s)
        self.last_error = error.splitlines()[0] if error else ""
        if began:
            self.since = now
        self.reachable = False
        return began

    def answered(self) -> bool:
        """It answered. True when this ends an outage."""
        ended = not self.reachable
        self.reachable, self.failures, self.since, self.last_error, self.retry_at = (
            True,
            0,
            None,
            "",
            0.0,
        )
        return ended
