"""The release policy and sweeps: a sweep's points are runs like any other (priority, fair share,
quotas), grouped by the sweep's id; a sweep's max_parallel (`group_limits`) caps its points in
Slurm, pending or running, and holds up no other run."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from hpcops.policy import (
    Active,
    Candidate,
    Decision,
    Limits,
    Quotas,
    plan_release,
    release_order_key,
)


def run(
    run_id: int,
    owner: str = "alice",
    *,
    group: int | None = None,
    priority: int = 0,
    queued_at: float | None = None,
    cpus: int = 1,
    gpus: int = 0,
    partition: str | None = None,
) -> Candidate:
    return Candidate(
        run_id=run_id,
        owner=owner,
        priority=priority,
        queued_at=float(run_id) if queued_at is None else queued_at,
        cpus=cpus,
        gpus=gpus,
        partition=partition,
        group=group,
    )


def job(
    owner: str = "alice",
    *,
    group: int | None = None,
    cpus: int = 1,
    gpus: int = 0,
    pending: bool = False,
    by_hand: bool = False,
) -> Active:
    return Active(owner, cpus, gpus, None, pending=pending, by_hand=by_hand, group=group)


def plan(
    candidates: Sequence[Candidate],
    active: Sequence[Active] = (),
    quotas: Quotas | None = None,
    usage: Mapping[str, float] | None = None,
    *,
    limits: Mapping[int, int] | None = None,
    max_active: int = 100,
    window: int = 100,
) -> Decision:
    return plan_release(
        candidates,
        active,
        quotas or Quotas(),
        usage or {},
        max_active=max_active,
        pending_window=window,
        group_limits=limits,
    )


def sweep(group: int, first_id: int, n: int, owner: str = "alice", **kw: int) -> list[Candidate]:
    """n points of one sweep, queued together (one submission), in index order."""
    return [
        run(first_id + i, owner, group=group, queued_at=float(first_id), **kw) for i in range(n)
    ]


# --- the group's limit ------------------------------------------------------------------------


def test_a_sweep_has_at_most_its_limit_in_slurm_counting_pending_and_running_points() -> None:
    active = [job(group=7), job(group=7, pending=True), job(group=8), job()]
    decision = plan(sweep(7, 1, 10), active, limits={7: 4})
    assert decision.release == [1, 2]
    reason = "its sweep s7 has 4 of max_parallel 4 points in Slurm"
    assert decision.waiting == dict.fromkeys(range(3, 11), reason)


def test_a_full_sweep_holds_up_no_other_run_not_even_its_owners_of_the_same_shape() -> None:
    candidates = [
        *sweep(7, 1, 5),  # alice's sweep, full
        run(6, "alice"),  # a single run of the same owner and shape
        *sweep(8, 7, 3),  # another sweep of alice's, with room for two
        *sweep(9, 10, 2),  # one without a limit
        run(12, "bob"),
    ]
    decision = plan(candidates, [job(group=7), job(group=7)], limits={7: 2, 8: 2})
    assert decision.release == [6, 7, 8, 10, 11, 12]
    assert decision.waiting == {
        **dict.fromkeys(range(1, 6), "its sweep s7 has 2 of max_parallel 2 points in Slurm"),
        9: "its sweep s8 has 2 of max_parallel 2 points in Slurm",
    }


def test_a_limit_of_one_reads_in_the_singular() -> None:
    decision = plan(sweep(3, 1, 2), limits={3: 1})
    assert decision.release == [1]
    assert decision.waiting == {2: "its sweep s3 has 1 of max_parallel 1 point in Slurm"}


def test_a_limit_lowered_below_what_is_in_slurm_releases_nothing_and_says_so() -> None:
    decision = plan(sweep(3, 1, 2), [job(group=3) for _ in range(5)], limits={3: 2})
    assert decision.release == []
    assert decision.waiting[1] == "its sweep s3 has 5 of max_parallel 2 points in Slurm"


def test_a_sweep_without_a_limit_plans_exactly_as_single_runs() -> None:
    candidates = [*sweep(1, 1, 6, gpus=1), run(7, "bob", gpus=1), *sweep(2, 8, 3, "bob")]
    singles = [run(c.run_id, c.owner, queued_at=c.queued_at, gpus=c.gpus) for c in candidates]
    args: tuple[list[Active], Quotas] = ([job("carol", gpus=1)], Quotas(lab=Limits(gpus=4)))
    for limits in (None, {}, {5: 1}):
        as_points = plan(candidates, *args, limits=limits, window=5)
        as_singles = plan(singles, *args, window=5)
        assert as_points.release == as_singles.release == [1, 2, 3, 8, 9]
        assert dict(as_points.waiting) == dict(as_singles.waiting)
        assert as_points.order == as_singles.order


def test_points_of_different_shapes_share_their_sweeps_limit() -> None:
    # A grid over resources.cpus: three shapes, one sweep, one limit.
    candidates = [run(i, group=4, queued_at=1.0, cpus=[1, 2, 4][i % 3]) for i in range(1, 10)]
    decision = plan(candidates, [job(group=4, cpus=2)], limits={4: 3})
    assert decision.release == [1, 2]
    assert set(decision.waiting.values()) == {
        "its sweep s4 has 3 of max_parallel 3 points in Slurm"
    }


def test_a_limit_of_zero_holds_every_point() -> None:
    decision = plan([*sweep(2, 1, 3), run(4)], limits={2: 0})
    assert decision.release == [4]
    assert decision.waiting[1] == "its sweep s2 has 0 of max_parallel 0 points in Slurm"


# --- reasons and order ------------------------------------------------------------------------


def test_the_sweeps_limit_is_named_when_it_holds_the_run_even_with_a_full_window() -> None:
    candidates = [*sweep(7, 1, 3), run(4, "bob"), run(5, "bob")]
    decision = plan(candidates, [job(group=7, pending=True)], limits={7: 2}, window=3)
    assert decision.release == [1, 4]
    assert decision.waiting == {
        2: "its sweep s7 has 2 of max_parallel 2 points in Slurm",
        3: "its sweep s7 has 2 of max_parallel 2 points in Slurm",
        5: "release window full: 3 runs pending in Slurm; 2 runs ahead in the lab's queue",
    }
    # A sweep with room, behind a full window, waits for the window.
    decision = plan(sweep(7, 1, 3), [job(pending=True)], limits={7: 2}, window=2)
    assert decision.release == [1]
    assert decision.waiting[2] == (
        "release window full: 2 runs pending in Slurm; next in the lab's queue"
    )


def test_the_sweeps_limit_comes_before_a_quota_and_a_quota_before_a_sweep_with_room() -> None:
    quotas = Quotas(lab=Limits(gpus=2))
    decision = plan(sweep(7, 1, 3, gpus=1), [job(group=7, gpus=1)], quotas, limits={7: 2})
    assert decision.release == [1]
    assert decision.waiting[2] == "its sweep s7 has 2 of max_parallel 2 points in Slurm"
    decision = plan(sweep(7, 1, 3, gpus=1), [job(group=7, gpus=1)], quotas, limits={7: 3})
    assert decision.release == [1]
    assert decision.waiting[2] == "lab GPU quota full: 2/2 in use by alice (2)"


def test_an_impossible_point_is_named_first() -> None:
    decision = plan(
        sweep(7, 1, 2, gpus=8), [job(group=7)], Quotas(lab=Limits(gpus=4)), limits={7: 1}
    )
    assert decision.waiting[1] == (
        "needs 8 GPUs, more than the lab quota of 4: it can never start until the quota grows"
    )


def test_order_and_waiting_are_the_lab_order_whatever_holds_the_runs() -> None:
    candidates = [
        *sweep(7, 1, 4),
        run(5, "bob", priority=1),
        *sweep(8, 6, 3, "bob", gpus=1),
        run(9, "carol"),
    ]
    usage = {"alice": 3.0, "bob": 1.0, "carol": 2.0}
    decision = plan(candidates, usage=usage, quotas=Quotas(lab=Limits(gpus=1)), limits={7: 2})
    expected = [c.run_id for c in sorted(candidates, key=lambda c: release_order_key(c, usage))]
    assert decision.order == expected == [5, 6, 7, 8, 9, 1, 2, 3, 4]
    assert decision.release == [5, 6, 9, 1, 2]
    assert list(decision.waiting) == [7, 8, 3, 4]
    assert len(decision.waiting) == 4
    assert decision.waiting[7] == "lab GPU quota full: 1/1 in use by bob (1)"
    assert decision.waiting[3] == "its sweep s7 has 2 of max_parallel 2 points in Slurm"


# --- a point is a run: priority, fair share, quotas -------------------------------------------


def test_a_points_priority_counts_as_any_runs() -> None:
    candidates = [*sweep(7, 1, 5), run(6, "bob")]
    candidates[3] = run(4, group=7, queued_at=1.0, priority=5)  # `hpcops top` on one point
    decision = plan(candidates, limits={7: 1})
    assert decision.order == [4, 1, 2, 3, 5, 6]
    assert decision.release == [4, 6]


def test_a_members_sweep_and_anothers_single_runs_interleave_by_fair_share() -> None:
    """Each tick releases one run (a window of one), the run ends, and its owner's usage grows:
    fair share alternates between alice's 10-point sweep and bob's single runs, as between two
    members' single runs."""
    queue = {c.run_id: c for c in [*sweep(1, 1, 10), *(run(i, "bob") for i in range(11, 16))]}
    usage = {"alice": 0.0, "bob": 0.5}
    released: list[int] = []
    while queue:
        decision = plan(list(queue.values()), usage=usage, limits={1: 3}, window=1)
        assert len(decision.release) == 1
        run_id = decision.release[0]
        usage[queue.pop(run_id).owner] += 1.0
        released.append(run_id)
    assert released == [1, 11, 2, 12, 3, 13, 4, 14, 5, 15, 6, 7, 8, 9, 10]

    # Without the growth, the member who used less goes first, sweep or not.
    decision = plan([*sweep(1, 1, 10), run(11, "bob")], usage={"alice": 5.0, "bob": 1.0})
    assert decision.order == [11, *range(1, 11)]


@pytest.mark.parametrize(("max_parallel", "at_once"), [(None, 2), (4, 2), (1, 1)])
def test_a_lab_gpu_quota_of_two_with_a_10_point_gpu_sweep(
    max_parallel: int | None, at_once: int
) -> None:
    """At most two points in Slurm at once, counting those already there; all ten go."""
    points = sweep(5, 1, 10, gpus=1)
    queue = {c.run_id: c for c in points[1:]}
    in_slurm = [1]  # point 0 already runs
    limits = None if max_parallel is None else {5: max_parallel}
    released: list[int] = [1]
    for _tick in range(30):
        if not queue:
            break
        active = [job(group=5, gpus=1) for _ in in_slurm]
        decision = plan(list(queue.values()), active, Quotas(lab=Limits(gpus=2)), limits=limits)
        in_slurm += decision.release
        assert len(in_slurm) <= at_once
        for run_id in decision.release:
            del queue[run_id]
        released += decision.release
        for reason in decision.waiting.values():
            if max_parallel == 1:
                assert reason == "its sweep s5 has 1 of max_parallel 1 point in Slurm"
            else:
                assert reason == "lab GPU quota full: 2/2 in use by alice (2)"
        in_slurm.pop(0)  # the oldest point ends
    assert released == list(range(1, 11))


def test_user_and_partition_quotas_count_a_sweeps_points() -> None:
    quotas = Quotas(per_user=Limits(jobs=3), partitions={"gpu": Limits(gpus=2)})
    candidates = [
        *sweep(1, 1, 6),
        *(run(i, "bob", group=2, queued_at=7.0, gpus=1, partition="gpu") for i in range(7, 10)),
    ]
    decision = plan(candidates, [job(group=1)], quotas, limits={1: 5, 2: 5})
    assert decision.release == [1, 2, 7, 8]
    assert decision.waiting[3] == "your job quota full: 3/3 in use"
    assert decision.waiting[9] == "partition gpu GPU quota full: 2/2"


# --- properties on random labs with sweeps ----------------------------------------------------

OWNERS = ["alice", "bob", "carol"]
GROUPS = [None, None, 1, 2, 3, 4]


def random_lab(
    seed: int,
) -> tuple[list[Candidate], list[Active], Quotas, dict[str, float], dict[int, int], int, int]:
    rng = random.Random(seed)
    candidates = [
        Candidate(
            run_id=run_id,
            owner=rng.choice(OWNERS),
            priority=rng.choice([0, 0, 1]),
            queued_at=float(rng.randint(0, 10)),
            cpus=rng.choice([1, 2, 4]),
            gpus=rng.choice([0, 0, 1]),
            partition=rng.choice([None, "gpu"]),
            group=rng.choice(GROUPS),
        )
        for run_id in rng.sample(range(1, 500), rng.randint(0, 50))
    ]
    active = [
        Active(
            owner=rng.choice(OWNERS),
            cpus=rng.choice([1, 2]),
            gpus=rng.choice([0, 1]),
            partition=rng.choice([None, "gpu"]),
            pending=rng.random() < 0.3,
            by_hand=rng.random() < 0.1,
            group=rng.choice(GROUPS),
        )
        for _ in range(rng.randint(0, 15))
    ]

    def limits(n: int) -> Limits:
        return Limits(*(None if rng.random() < 0.5 else rng.randint(1, n) for _ in range(3)))

    quotas = Quotas(lab=limits(30), per_user=limits(12), partitions={"gpu": limits(8)})
    usage = {owner: float(rng.choice([0, 1, 2])) for owner in OWNERS}
    group_limits = {g: rng.randint(0, 6) for g in (1, 2, 3) if rng.random() < 0.7}
    return candidates, active, quotas, usage, group_limits, rng.randint(0, 40), rng.randint(0, 20)


def _fits(c: Candidate, jobs: Sequence[Active], quotas: Quotas) -> bool:
    scopes = [
        (quotas.lab, jobs),
        (quotas.for_user(c.owner), [j for j in jobs if j.owner == c.owner]),
        (
            quotas.partitions.get(c.partition or "", Limits()),
            [j for j in jobs if (j.partition or "") == (c.partition or "")],
        ),
    ]
    for limits, inside in scopes:
        for limit, used, need in [
            (limits.jobs, len(inside), 1),
            (limits.cpus, sum(j.cpus for j in inside), c.cpus),
            (limits.gpus, sum(j.gpus for j in inside), c.gpus),
        ]:
            if limit is not None and used + need > limit:
                return False
    return True


def _in_group(jobs: Sequence[Active], group: int | None) -> int:
    return sum(1 for j in jobs if group is not None and j.group == group)


def reference_release(
    candidates: Sequence[Candidate],
    active: Sequence[Active],
    quotas: Quotas,
    usage: Mapping[str, float],
    group_limits: Mapping[int, int],
    max_active: int,
    window: int,
) -> tuple[list[int], list[Active]]:
    """The rules read literally: sort, then walk one run at a time."""
    jobs = list(active)
    released: list[int] = []
    for c in sorted(candidates, key=lambda c: release_order_key(c, usage)):
        ours = [j for j in jobs if not j.by_hand]
        if len(ours) >= max_active or sum(j.pending for j in ours) >= window:
            break
        limit = None if c.group is None else group_limits.get(c.group)
        if limit is not None and _in_group(jobs, c.group) >= limit:
            continue
        if _fits(c, jobs, quotas):
            jobs.append(Active(c.owner, c.cpus, c.gpus, c.partition, pending=True, group=c.group))
            released.append(c.run_id)
    return released, jobs


@pytest.mark.parametrize("seed", range(300))
def test_random_labs_with_sweeps(seed: int) -> None:
    candidates, active, quotas, usage, group_limits, max_active, window = random_lab(seed)
    decision = plan(
        candidates,
        active,
        quotas,
        usage,
        limits=group_limits,
        max_active=max_active,
        window=window,
    )
    expected, after = reference_release(
        candidates, active, quotas, usage, group_limits, max_active, window
    )
    assert decision.release == expected
    assert decision.order == [
        c.run_id for c in sorted(candidates, key=lambda c: release_order_key(c, usage))
    ]
    assert list(decision.waiting) == [r for r in decision.order if r not in set(expected)]
    for group, limit in group_limits.items():
        before, now = _in_group(active, group), _in_group(after, group)
        assert now == before or now <= limit
    by_id = {c.run_id: c for c in candidates}
    for run_id, reason in decision.waiting.items():
        c = by_id[run_id]
        limit = None if c.group is None else group_limits.get(c.group)
        group_full = limit is not None and _in_group(after, c.group) >= limit
        if not _fits(c, [], quotas):
            assert reason.startswith("needs "), reason
        elif group_full:
            assert reason == (
                f"its sweep s{c.group} has {_in_group(after, c.group)} of max_parallel {limit} "
                f"{'point' if limit == 1 else 'points'} in Slurm"
            )
        else:
            assert not reason.startswith("its sweep"), reason
