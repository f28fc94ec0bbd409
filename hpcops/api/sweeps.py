"""A sweep's state and progress, derived from its points: pure functions of how many points are
in each run state (Store.sweep_counts counts each point's latest run).

The summary state is one of the run states, so `hpcops ls --state` and scripts read a sweep as
they read a run. The first rule that matches wins:

    any point RUNNING                                   RUNNING
    any point in Slurm (SUBMITTING, STAGING, PENDING)   PENDING
    any point QUEUED                                    QUEUED    (the rest wait for quota or ended)
    any point HELD                                      HELD      (nothing else will move)
    every point COMPLETED                               COMPLETED
    any point ended otherwise than COMPLETED or
      CANCELLED (FAILED, TIMEOUT, OUT_OF_MEMORY, ...)   FAILED
    otherwise (COMPLETED and CANCELLED points)          CANCELLED
    no points at all                                    UNKNOWN

So a sweep stays active while any point is, and a failed point fails the sweep only once the
others have ended; the progress buckets say how many of each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpcops.states import RunState

if TYPE_CHECKING:
    from hpcops.spec import Spec

# Progress buckets, in the order `hpcops ls` prints them.
BUCKETS: tuple[str, ...] = ("queued", "held", "pending", "running", "done", "failed", "cancelled")
_BUCKET_OF: dict[RunState, str] = {
    RunState.QUEUED: "queued",
    RunState.HELD: "held",
    RunState.SUBMITTING: "pending",
    RunState.STAGING: "pending",
    RunState.PENDING: "pending",
    RunState.RUNNING: "running",
    RunState.COMPLETED: "done",
    RunState.CANCELLED: "cancelled",
}  # every other state is an end that is not a success: "failed"


def _state(name: str) -> RunState:
    try:
        return RunState(name)
    except ValueError:
        return RunState.UNKNOWN  # a state this version does not know: not a success


def bucket(state: str) -> str:
    """The progress bucket of a run state."""
    return _BUCKET_OF.get(_state(state), "failed")


def progress(counts: Mapping[str, int]) -> dict[str, int]:
    """Points per bucket, every bucket present, in BUCKETS' order."""
    found = dict.fromkeys(BUCKETS, 0)
    for state, n in counts.items():
        found[bucket(state)] += n
    return found


def summary_state(counts: Mapping[str, int]) -> RunState:
    """The sweep's state, from its points' counts by state (the rules in the docstring)."""
    buckets = progress({state: n for state, n in counts.items() if n > 0})
    for name, state in (
        ("running", RunState.RUNNING),
        ("pending", RunState.PENDING),
        ("queued", RunState.QUEUED),
        ("held", RunState.HELD),
    ):
        if buckets[name]:
            return state
    total = sum(buckets.values())
    if total == 0:
        return RunState.UNKNOWN
    if buckets["done"] == total:
        return RunState.COMPLETED
    if buckets["failed"]:
        return RunState.FAILED
    return RunState.CANCELLED


def progress_text(n_points: int, buckets: Mapping[str, int]) -> str:
    """`9 pts: 2 queued 3 running 3 done 1 failed` (empty buckets left out)."""
    parts = [f"{buckets[name]} {name}" for name in BUCKETS if buckets.get(name)]
    return f"{n_points} pts" + (f": {' '.join(parts)}" if parts else "")


@dataclass(frozen=True)
class Scored:
    """A point's objective: its run, its index, its value (None: not known yet)."""

    run_id: int
    index: int
    value: float | None


def ranked(points: Iterable[Scored], mode: str | None) -> list[Scored]:
    """Best first for the objective's mode ("max" or "min"), points without a value last; by
    index without an objective (mode None) and among ties."""
    items = list(points)
    if mode not in ("max", "min"):
        return sorted(items, key=lambda p: p.index)
    sign = -1.0 if mode == "max" else 1.0

    def key(point: Scored) -> tuple[bool, float, int]:
        value = finite(point.value)
        return (value is None, 0.0 if value is None else sign * value, point.index)

    return sorted(items, key=key)


def best(points: Iterable[Scored], mode: str | None) -> Scored | None:
    """The best point with a value, or None."""
    if mode not in ("max", "min"):
        return None
    first = next(iter(ranked(points, mode)), None)
    return first if first is not None and finite(first.value) is not None else None


def finite(value: float | None) -> float | None:
    """An objective as JSON can carry it: NaN and infinities (a diverged run) are no value."""
    return value if value is not None and math.isfinite(value) else None


def sweep_preview(spec: Spec) -> dict[str, Any] | None:
    """What `validate` says of a sweep spec's points: {"n_points", "points"} in index order;
    None for a spec without a sweep. A random search without a seed draws its seed, and so its
    points, when it is queued: "points" is None then, and "note" says so."""
    from hpcops.spec import sweep_points  # the spec is loaded already: no import cost

    sweep = spec.sweep
    if sweep is None:
        return None
    if sweep.random is not None and sweep.random.seed is None:
        return {
            "n_points": sweep.n_points,
            "points": None,
            "note": "drawn when the sweep is queued (no seed given; the seed drawn is recorded)",
        }
    return {"n_points": sweep.n_points, "points": [dict(p) for p in sweep_points(spec)]}
