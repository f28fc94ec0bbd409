"""`plan_release` on a busy lab: 10,000 queued runs from 20 owners, 500 jobs in Slurm (60 by hand).
Median of 50 calls after a warm-up. Target: under 5 ms per tick. The baseline is `sorted()` of the
same candidates by `release_order_key`, in the same process: what a plan that sorts the queue
first would pay before deciding anything.

Also measured, for the record: a tick on which nothing fits (the walk meets every group of the
queue), and reading every reason and the whole order once, as `hpcops ls` does.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from hpcops.policy import (
    Active,
    Candidate,
    Limits,
    Quotas,
    plan_release,
    release_order_key,
)
from tests.benchmarks.common import write_result

RUNS = 50
QUEUED = 10_000
ACTIVE = 500
BY_HAND = 60
OWNERS = [f"user{i:02d}" for i in range(20)]
QUOTAS = Quotas(
    lab=Limits(jobs=600, cpus=3000, gpus=64),
    per_user=Limits(jobs=60, cpus=400, gpus=8),
    users={"user00": Limits(gpus=16), "user01": Limits(jobs=100, cpus=800)},
    partitions={"gpu": Limits(jobs=120, gpus=64), "long": Limits(jobs=40)},
)
MAX_ACTIVE = 480
PENDING_WINDOW = 24


def _shape(rng: random.Random) -> tuple[int, int, str | None]:
    """(cpus, gpus, partition): six runs in ten CPU-only, the rest on the GPU partition."""
    if rng.random() < 0.6:
        return rng.choice([1, 2, 4, 8, 16]), 0, rng.choice([None, None, "cpu", "long"])
    return rng.choice([4, 8]), rng.choice([1, 1, 2, 4]), "gpu"


def lab(seed: int = 2026) -> tuple[list[Candidate], list[Active], dict[str, float]]:
    rng = random.Random(seed)
    candidates = []
    for run_id in range(1, QUEUED + 1):
        cpus, gpus, partition = _shape(rng)
        candidates.append(
            Candidate(
                run_id=run_id,
                owner=rng.choice(OWNERS),
                priority=rng.choices([0, 1, 5, 10], weights=[70, 20, 8, 2])[0],
                queued_at=1.77e9 + 2.0 * run_id + rng.random(),
                cpus=cpus,
                gpus=gpus,
                partition=partition,
            )
        )
    active = []
    gpus_in_use = 0
    for i in range(ACTIVE):
        cpus, gpus, partition = _shape(rng)
        if gpus_in_use + gpus > 60:  # the lab's GPUs nearly all busy, as on a deadline week
            cpus, gpus, partition = 2, 0, None
        gpus_in_use += gpus
        by_hand = i < BY_HAND
        active.append(
            Active(
                owner=rng.choice(OWNERS),
                cpus=cpus,
                gpus=gpus,
                partition=partition,
                # A third of the jobs by hand pend; 16 of hpcops' own pend, the rest run.
                pending=i % 3 == 0 if by_hand else i < BY_HAND + 16,
                by_hand=by_hand,
            )
        )
    # Three owners new this window: no usage yet.
    usage = {owner: round(rng.uniform(5.0, 900.0), 1) for owner in OWNERS[:17]}
    return candidates, active, usage


def _median_ms(call: Callable[[], Any], runs: int = RUNS) -> float:
    call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> None:
    candidates, active, usage = lab()
    decision = plan_release(
        candidates,
        active,
        QUOTAS,
        usage,
        max_active=MAX_ACTIVE,
        pending_window=PENDING_WINDOW,
    )
    plan_ms = _median_ms(
        lambda: plan_release(
            candidates,
            active,
            QUOTAS,
            usage,
            max_active=MAX_ACTIVE,
            pending_window=PENDING_WINDOW,
        )
    )
    sort_ms = _median_ms(lambda: sorted(candidates, key=lambda c: release_order_key(c, usage)))

    # Nothing fits: the lab's GPUs and CPUs are taken and the window is wide open, so the walk
    # meets the first run of every group and releases none.
    full = Quotas(lab=Limits(cpus=sum(a.cpus for a in active), gpus=sum(a.gpus for a in active)))
    nothing_fits = plan_release(
        candidates, active, full, usage, max_active=QUEUED, pending_window=QUEUED
    )
    assert not nothing_fits.release
    nothing_fits_ms = _median_ms(
        lambda: plan_release(
            candidates, active, full, usage, max_active=QUEUED, pending_window=QUEUED
        )
    )

    def read_everything() -> None:
        fresh = plan_release(
            candidates,
            active,
            QUOTAS,
            usage,
            max_active=MAX_ACTIVE,
            pending_window=PENDING_WINDOW,
        )
        dict(fresh.waiting)
        _ = fresh.order

    read_everything_ms = _median_ms(read_everything, runs=10)
    write_result(
        "policy",
        {
            "queued": QUEUED,
            "active": ACTIVE,
            "active_by_hand": BY_HAND,
            "released_per_tick": len(decision.release),
            "plan_release_median_ms": round(plan_ms, 2),
            "sort_only_median_ms": round(sort_ms, 2),
            "ratio": round(plan_ms / sort_ms, 2),
            "target": "plan_release under 5 ms per tick",
            "plan_release_nothing_fits_median_ms": round(nothing_fits_ms, 2),
            "plan_plus_every_reason_and_order_median_ms": round(read_everything_ms, 1),
        },
    )


if __name__ == "__main__":
    main()
