"""`plan_release` on a busy lab: 10,000 queued runs from 20 owners, 500 jobs in Slurm (60 by hand).
Median of 50 calls after a warm-up. Target: under 5 ms per tick. The baseline is `sorted()` of the
same candidates by `release_order_key`, in the same process: what a plan that sorts the queue
first would pay before deciding anything.

Also measured, for the record: a tick on which nothing fits (the walk meets every group of the
queue), and reading every reason and the whole order once, as `hpcops ls` does.

Sweeps: the same lab with 1,000 of the 10,000 queued runs the points of one sweep (an urgent one,
priority 20, above every other run, so the walk meets it first) with max_parallel 16 and 12 of its
points already running; planned with the limit (its points group by sweep) and without it (they
group with their owner's single runs, as a queue without limited sweeps does). Target: the limited
plan under 5 ms too.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
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
SWEEP = 1  # the sweep's id
SWEEP_POINTS = 1000
SWEEP_FIRST_RUN = 4001
MAX_PARALLEL = 16
SWEEP_RUNNING = 12


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


def sweep_lab(
    candidates: list[Candidate], active: list[Active]
) -> tuple[list[Candidate], list[Active]]:
    """`lab()` with 1,000 of its queued runs the points of one sweep, 12 of them running."""
    first = candidates[SWEEP_FIRST_RUN - 1]
    points = [
        replace(
            c,
            owner="user03",
            priority=20,
            queued_at=first.queued_at,  # one submission
            cpus=2,
            gpus=0,
            partition=None,
            group=SWEEP,
        )
        for c in candidates[SWEEP_FIRST_RUN - 1 : SWEEP_FIRST_RUN - 1 + SWEEP_POINTS]
    ]
    queued = candidates[: SWEEP_FIRST_RUN - 1] + points
    queued += candidates[SWEEP_FIRST_RUN - 1 + SWEEP_POINTS :]
    running = [i for i, a in enumerate(active) if not a.by_hand and not a.pending]
    in_slurm = active[:]
    for i in running[:SWEEP_RUNNING]:
        in_slurm[i] = replace(
            active[i], owner="user03", cpus=2, gpus=0, partition=None, group=SWEEP
        )
    return queued, in_slurm


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

    sweep_queue, sweep_active = sweep_lab(candidates, active)
    assert len(sweep_queue) == QUEUED

    def plan_sweep(limits: dict[int, int] | None) -> Any:
        return plan_release(
            sweep_queue,
            sweep_active,
            QUOTAS,
            usage,
            max_active=MAX_ACTIVE,
            pending_window=PENDING_WINDOW,
            group_limits=limits,
        )

    limited = plan_sweep({SWEEP: MAX_PARALLEL})
    points = {c.run_id for c in sweep_queue if c.group == SWEEP}
    points_released = sum(run_id in points for run_id in limited.release)
    assert points_released == MAX_PARALLEL - SWEEP_RUNNING, points_released
    unlimited = plan_sweep(None)
    sweep_limited_ms = _median_ms(lambda: plan_sweep({SWEEP: MAX_PARALLEL}))
    sweep_unlimited_ms = _median_ms(lambda: plan_sweep(None))
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
            "sweep_points": SWEEP_POINTS,
            "sweep_max_parallel": MAX_PARALLEL,
            "sweep_points_running": SWEEP_RUNNING,
            "sweep_limited_released_per_tick": len(limited.release),
            "sweep_limited_points_released": points_released,
            "plan_release_sweep_limited_median_ms": round(sweep_limited_ms, 2),
            "sweep_unlimited_points_released": sum(r in points for r in unlimited.release),
            "plan_release_sweep_unlimited_median_ms": round(sweep_unlimited_ms, 2),
        },
    )


if __name__ == "__main__":
    main()
