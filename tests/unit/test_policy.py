from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from hpcops.policy import (
    LAB,
    RESOURCES,
    Active,
    Candidate,
    Decision,
    Limits,
    Quotas,
    Resource,
    Scope,
    describe_usage,
    plan_release,
    release_order_key,
)


def run(
    run_id: int,
    owner: str = "alice",
    *,
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
    )


def job(
    owner: str = "alice",
    *,
    cpus: int = 1,
    gpus: int = 0,
    partition: str | None = None,
    pending: bool = False,
    by_hand: bool = False,
) -> Active:
    return Active(owner, cpus, gpus, partition, pending=pending, by_hand=by_hand)


def plan(
    candidates: Sequence[Candidate],
    active: Sequence[Active] = (),
    quotas: Quotas | None = None,
    usage: Mapping[str, float] | None = None,
    *,
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
    )


# --- order ------------------------------------------------------------------------------------


def test_priority_beats_fair_share_beats_time() -> None:
    candidates = [
        run(1, "alice", queued_at=1.0),
        run(2, "bob", priority=1, queued_at=3.0),
        run(3, "carol", queued_at=2.0),
    ]
    usage = {"alice": 5.0, "bob": 500.0, "carol": 0.5}
    decision = plan(candidates, usage=usage)
    # bob has used the most but asked for a higher priority; carol has used less than alice.
    assert decision.order == [2, 3, 1]
    assert decision.release == [2, 3, 1]


def test_fair_share_among_equal_priorities_and_an_owner_without_usage_has_used_nothing() -> None:
    candidates = [
        run(1, "alice"),
        run(2, "bob"),
        run(3, "carol"),
        run(4, "alice"),
        run(5, "bob"),
        run(6, "carol"),
    ]
    decision = plan(candidates, usage={"alice": 10.0, "bob": 2.0})
    assert decision.order == [3, 6, 2, 5, 1, 4]


def test_owners_with_equal_usage_interleave_by_time_then_run_id() -> None:
    candidates = [
        run(1, "alice", queued_at=10.0),
        run(2, "bob", queued_at=5.0),
        run(3, "alice", queued_at=5.0),
        run(4, "bob", queued_at=1.0),
    ]
    assert plan(candidates, usage={"alice": 1.0, "bob": 1.0}).order == [4, 2, 3, 1]


def test_ties_are_deterministic_whatever_the_input_order() -> None:
    candidates = [run(i, f"user{i % 3}", queued_at=float(i // 4)) for i in range(1, 40)]
    quotas = Quotas(lab=Limits(jobs=10))
    expected = plan(candidates, quotas=quotas, window=7)
    rng = random.Random(7)
    for _ in range(10):
        shuffled = candidates[:]
        rng.shuffle(shuffled)
        decision = plan(shuffled, quotas=quotas, window=7)
        assert decision.order == expected.order
        assert decision.release == expected.release
        assert dict(decision.waiting) == dict(expected.waiting)


def test_release_order_key_is_the_documented_order() -> None:
    c = run(7, "alice", priority=2, queued_at=3.5)
    assert release_order_key(c, {"alice": 1.5}) == (-2, 1.5, 3.5, 7)
    assert release_order_key(c, {}) == (-2, 0.0, 3.5, 7)


# --- quotas -----------------------------------------------------------------------------------


def test_lab_gpu_quota_blocks_and_a_cpu_run_behind_it_still_goes() -> None:
    active = [job("alice", gpus=2), job("bob", gpus=2)]
    decision = plan(
        [run(1, gpus=1), run(2, cpus=8)], active, Quotas(lab=Limits(gpus=4)), max_active=10
    )
    assert decision.release == [2]
    assert decision.waiting == {1: "lab GPU quota full: 4/4 in use by alice (2), bob (2)"}


def test_lab_cpu_quota_not_yet_full_says_what_the_run_needs() -> None:
    decision = plan(
        [run(1, cpus=4), run(2, "bob", cpus=1)],
        [job("alice", cpus=4), job("carol", cpus=2)],
        Quotas(lab=Limits(cpus=8)),
    )
    assert decision.release == [2]
    # The figures are those after this plan's releases: bob's run is in Slurm now.
    assert decision.waiting[1] == (
        "lab CPU quota: 7/8 in use by alice (4), carol (2), bob (1); needs 4 CPUs"
    )


def test_lab_job_quota_counts_this_plans_releases() -> None:
    decision = plan([run(i) for i in range(1, 6)], [job("bob")], Quotas(lab=Limits(jobs=3)))
    assert decision.release == [1, 2]
    assert decision.waiting[3] == "lab job quota full: 3/3 in use by alice (2), bob (1)"


def test_lab_gpu_quota_counts_this_plans_releases() -> None:
    decision = plan([run(i, gpus=2) for i in range(1, 4)], quotas=Quotas(lab=Limits(gpus=4)))
    assert decision.release == [1, 2]
    assert decision.waiting == {3: "lab GPU quota full: 4/4 in use by alice (4)"}


def test_user_quota_blocks_that_user_only() -> None:
    decision = plan(
        [run(1, "alice", gpus=1), run(2, "alice", cpus=2), run(3, "bob", gpus=1)],
        [job("alice", gpus=2)],
        Quotas(per_user=Limits(gpus=2)),
    )
    assert decision.release == [2, 3]
    assert decision.waiting == {1: "your GPU quota full: 2/2 in use"}


def test_user_cpu_quota_not_yet_full() -> None:
    decision = plan(
        [run(1, cpus=8)], [job(cpus=30)], Quotas(per_user=Limits(cpus=32)), max_active=10
    )
    assert decision.waiting[1] == "your CPU quota: 30/32 in use; needs 8 CPUs"


def test_a_user_override_replaces_the_default_field_by_field() -> None:
    quotas = Quotas(
        per_user=Limits(jobs=5, cpus=4, gpus=1), users={"alice": Limits(gpus=3, jobs=None)}
    )
    assert quotas.for_user("alice") == Limits(jobs=5, cpus=4, gpus=3)
    assert quotas.for_user("bob") == Limits(jobs=5, cpus=4, gpus=1)
    decision = plan(
        [run(1, "alice", gpus=2), run(2, "bob", gpus=2), run(3, "alice", cpus=5)], quotas=quotas
    )
    assert decision.release == [1]
    assert decision.waiting == {
        2: "needs 2 GPUs, more than your quota of 1: it can never start until the quota grows",
        3: "needs 5 CPUs, more than your quota of 4: it can never start until the quota grows",
    }


def test_partition_quota_blocks_that_partition_only() -> None:
    active = [job(partition="gpu", gpus=1) for _ in range(8)]
    decision = plan(
        [run(1, partition="gpu", gpus=1), run(2, partition="cpu"), run(3)],
        active,
        Quotas(partitions={"gpu": Limits(jobs=8)}),
    )
    assert decision.release == [2, 3]
    assert decision.waiting == {1: "partition gpu job quota full: 8/8"}


def test_partition_cpu_quota_not_yet_full() -> None:
    decision = plan(
        [run(1, cpus=8, partition="gpu")],
        [job("bob", cpus=60, partition="gpu")],
        Quotas(partitions={"gpu": Limits(cpus=64)}),
    )
    assert decision.waiting == {1: "partition gpu CPU quota: 60/64; needs 8 CPUs"}


def test_the_default_partition_is_counted_under_the_empty_name() -> None:
    decision = plan(
        [run(1, cpus=2), run(2, cpus=2, partition="cpu"), run(3, cpus=1, partition="")],
        [job(cpus=3)],
        Quotas(partitions={"": Limits(cpus=4)}),
    )
    assert decision.release == [2, 3]
    # Run 3 ("") took the default partition's last CPU, as a run with no partition would.
    assert decision.waiting == {1: "default partition CPU quota full: 4/4"}


def test_the_first_blocking_quota_is_named_lab_then_user_then_partition() -> None:
    quotas = Quotas(lab=Limits(gpus=2), per_user=Limits(gpus=2), partitions={"gpu": Limits(gpus=2)})
    decision = plan([run(1, gpus=1, partition="gpu")], [job(gpus=2, partition="gpu")], quotas)
    assert decision.waiting[1] == "lab GPU quota full: 2/2 in use by alice (2)"
    quotas = Quotas(per_user=Limits(gpus=2), partitions={"gpu": Limits(gpus=2)})
    decision = plan([run(1, gpus=1, partition="gpu")], [job(gpus=2, partition="gpu")], quotas)
    assert decision.waiting[1] == "your GPU quota full: 2/2 in use"


def test_jobs_submitted_by_hand_take_quota_but_not_the_window_or_max_active() -> None:
    by_hand = [job("carol", gpus=3, pending=True, by_hand=True) for _ in range(1)]
    by_hand += [job("dave", pending=True, by_hand=True) for _ in range(5)]
    decision = plan(
        [run(1, gpus=2), run(2, gpus=1), run(3, gpus=1)],
        by_hand,
        Quotas(lab=Limits(gpus=4)),
        max_active=2,
        window=2,
    )
    assert decision.release == [2]
    assert decision.waiting[1] == "lab GPU quota full: 4/4 in use by carol (3), alice (1)"
    assert decision.waiting[3] == "lab GPU quota full: 4/4 in use by carol (3), alice (1)"


# --- window and max_active --------------------------------------------------------------------


def test_the_window_counts_our_pending_jobs_not_our_running_ones() -> None:
    active = [job(pending=True), *[job() for _ in range(5)]]
    decision = plan([run(i) for i in range(1, 5)], active, window=2)
    assert decision.release == [1]
    assert decision.waiting == {
        2: "release window full: 2 runs pending in Slurm; next in the lab's queue",
        3: "release window full: 2 runs pending in Slurm; 1 run ahead in the lab's queue",
        4: "release window full: 2 runs pending in Slurm; 2 runs ahead in the lab's queue",
    }


def test_once_the_window_is_full_nothing_more_goes_even_what_would_fit() -> None:
    decision = plan(
        [run(1, gpus=1), run(2), run(3), run(4)],
        [job("bob", gpus=1)],
        Quotas(lab=Limits(gpus=1)),
        window=2,
    )
    assert decision.release == [2, 3]
    # Run 1 was reached and skipped for the quota; run 4 was never reached.
    assert decision.waiting == {
        1: "lab GPU quota full: 1/1 in use by bob (1)",
        4: "release window full: 2 runs pending in Slurm; 1 run ahead in the lab's queue",
    }


def test_max_active_counts_our_jobs_pending_or_running_and_not_those_by_hand() -> None:
    active = [job(), job(pending=True), *[job("carol", by_hand=True) for _ in range(10)]]
    decision = plan([run(i) for i in range(1, 4)], active, max_active=3)
    assert decision.release == [1]
    assert decision.waiting[2] == (
        "run limit full: 3/3 hpcops runs in Slurm (max_active); next in the lab's queue"
    )


def test_max_active_is_named_before_the_window_when_both_are_full() -> None:
    decision = plan([run(1)], [job(pending=True), job(pending=True)], max_active=2, window=2)
    assert decision.release == []
    assert decision.waiting[1] == (
        "run limit full: 2/2 hpcops runs in Slurm (max_active); next in the lab's queue"
    )


def test_a_window_made_smaller_than_what_is_pending_says_so() -> None:
    decision = plan([run(1)], [job(pending=True) for _ in range(3)], window=2)
    assert decision.waiting[1] == (
        "release window full: 3 runs pending in Slurm (window 2); next in the lab's queue"
    )


def test_a_window_of_zero_says_so() -> None:
    assert plan([run(1)], window=0).waiting[1] == (
        "release window full: 0 runs pending in Slurm (window 0); next in the lab's queue"
    )


def test_window_of_one_reads_in_the_singular() -> None:
    decision = plan([run(1), run(2)], window=1)
    assert decision.release == [1]
    assert decision.waiting[2] == (
        "release window full: 1 run pending in Slurm; next in the lab's queue"
    )


# --- impossible requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "quotas", "reason"),
    [
        (
            run(1, gpus=8),
            Quotas(lab=Limits(gpus=4)),
            "needs 8 GPUs, more than the lab quota of 4: it can never start until the quota grows",
        ),
        (
            run(1, gpus=1),
            Quotas(lab=Limits(gpus=0)),
            "needs 1 GPU, more than the lab quota of 0: it can never start until the quota grows",
        ),
        (
            run(1, cpus=32),
            Quotas(per_user=Limits(cpus=16)),
            "needs 32 CPUs, more than your quota of 16: it can never start until the quota grows",
        ),
        (
            run(1, partition="gpu"),
            Quotas(partitions={"gpu": Limits(jobs=0)}),
            "needs 1 job, more than the partition gpu quota of 0: it can never start until "
            "the quota grows",
        ),
        (
            run(1, gpus=2),
            Quotas(partitions={"": Limits(gpus=1)}),
            "needs 2 GPUs, more than the default partition quota of 1: it can never start until "
            "the quota grows",
        ),
    ],
)
def test_a_request_over_a_limit_on_its_own_can_never_start(
    candidate: Candidate, quotas: Quotas, reason: str
) -> None:
    decision = plan([candidate, run(2, "bob")], quotas=quotas)
    assert decision.release == [2]
    assert decision.waiting == {1: reason}


def test_an_impossible_request_is_named_even_when_the_window_is_full() -> None:
    decision = plan([run(1, gpus=8)], [job(pending=True)], Quotas(lab=Limits(gpus=4)), window=1)
    assert decision.waiting[1].startswith("needs 8 GPUs, more than the lab quota of 4")


# --- reasons ----------------------------------------------------------------------------------


def test_in_use_lists_the_largest_users_first_then_by_name_and_at_most_five() -> None:
    active = [job(owner, gpus=n) for owner, n in [("f", 1), ("e", 2), ("d", 2), ("c", 1)]]
    active += [job(owner, gpus=1) for owner in ("b", "a", "g")]
    assert describe_usage(active, "gpus", LAB) == "d (2), e (2), a (1), b (1), c (1), +2 more"
    decision = plan([run(1, "z", gpus=1)], active, Quotas(lab=Limits(gpus=9)))
    assert decision.waiting[1] == (
        "lab GPU quota full: 9/9 in use by d (2), e (2), a (1), b (1), c (1), +2 more"
    )


def test_describe_usage_counts_within_its_scope() -> None:
    active = [
        job("alice", cpus=4, partition="gpu"),
        job("alice", cpus=2),
        job("bob", cpus=8, partition="gpu", by_hand=True),
    ]
    assert describe_usage(active, "cpus", LAB) == "bob (8), alice (6)"
    assert describe_usage(active, "jobs", LAB) == "alice (2), bob (1)"
    assert describe_usage(active, "cpus", Scope("partition", "gpu")) == "bob (8), alice (4)"
    assert describe_usage(active, "cpus", Scope("partition", "")) == "alice (2)"
    assert describe_usage(active, "cpus", Scope("user", "alice")) == "alice (6)"
    assert describe_usage(active, "gpus", LAB) == "nobody"


def test_waiting_holds_every_run_not_released_in_release_order() -> None:
    candidates = [run(5), run(4, priority=1), run(3), run(2, gpus=1), run(1)]
    decision = plan(candidates, quotas=Quotas(lab=Limits(gpus=0)), window=2)
    assert decision.release == [4, 1]
    assert decision.order == [4, 1, 2, 3, 5]
    assert list(decision.waiting) == [2, 3, 5]
    assert len(decision.waiting) == 3
    assert 2 in decision.waiting
    assert 4 not in decision.waiting
    assert 99 not in decision.waiting
    with pytest.raises(KeyError):
        decision.waiting[4]
    assert all(isinstance(reason, str) and reason for reason in decision.waiting.values())


def test_an_empty_queue() -> None:
    decision = plan([], [job(pending=True)])
    assert (decision.release, dict(decision.waiting), decision.order) == ([], {}, [])


# --- properties on random labs ----------------------------------------------------------------

OWNERS = ["alice", "bob", "carol", "dave", "erin"]
PARTITIONS = [None, "", "gpu", "cpu"]


def _limits(rng: random.Random, scale: int) -> Limits:
    def one(n: int) -> int | None:
        return None if rng.random() < 0.4 else rng.randint(0 if rng.random() < 0.05 else 1, n)

    return Limits(jobs=one(3 * scale), cpus=one(8 * scale), gpus=one(2 * scale))


def random_lab(
    seed: int,
) -> tuple[list[Candidate], list[Active], Quotas, dict[str, float], int, int]:
    rng = random.Random(seed)
    candidates = [
        Candidate(
            run_id=run_id,
            owner=rng.choice(OWNERS),
            priority=rng.choice([0, 0, 1, 2]),
            queued_at=float(rng.randint(0, 20)),  # coarse: many ties
            cpus=rng.choice([1, 1, 2, 4, 8]),
            gpus=rng.choice([0, 0, 0, 1, 2]),
            partition=rng.choice(PARTITIONS),
        )
        for run_id in rng.sample(range(1, 1000), rng.randint(0, 60))
    ]
    active = [
        Active(
            owner=rng.choice([*OWNERS, "frank"]),
            cpus=rng.choice([1, 2, 4]),
            gpus=rng.choice([0, 0, 1]),
            partition=rng.choice(PARTITIONS),
            pending=rng.random() < 0.3,
            by_hand=rng.random() < 0.2,
        )
        for _ in range(rng.randint(0, 30))
    ]
    quotas = Quotas(
        lab=_limits(rng, 10),
        per_user=_limits(rng, 4),
        users={owner: _limits(rng, 4) for owner in rng.sample(OWNERS, 2)},
        partitions={p or "": _limits(rng, 4) for p in rng.sample(PARTITIONS, 2)},
    )
    usage = {owner: float(rng.choice([0, 1, 1, 5])) for owner in rng.sample(OWNERS, 3)}
    return candidates, active, quotas, usage, rng.randint(0, 60), rng.randint(0, 20)


def _totals(jobs: Sequence[Active], scope: Scope) -> dict[Resource, int]:
    inside = [j for j in jobs if scope.holds(j.owner, j.partition)]
    return {
        "jobs": len(inside),
        "cpus": sum(j.cpus for j in inside),
        "gpus": sum(j.gpus for j in inside),
    }


def _fits(c: Candidate, jobs: Sequence[Active], quotas: Quotas) -> bool:
    part = c.partition or ""
    for scope, limits in [
        (LAB, quotas.lab),
        (Scope("user", c.owner), quotas.for_user(c.owner)),
        (Scope("partition", part), quotas.partitions.get(part, Limits())),
    ]:
        totals = _totals(jobs, scope)
        need = {"jobs": 1, "cpus": c.cpus, "gpus": c.gpus}
        for resource in RESOURCES:
            limit = getattr(limits, resource)
            if limit is not None and totals[resource] + need[resource] > limit:
                return False
    return True


def _as_active(c: Candidate) -> Active:
    return Active(c.owner, c.cpus, c.gpus, c.partition, pending=True)


def reference_release(
    candidates: Sequence[Candidate],
    active: Sequence[Active],
    quotas: Quotas,
    usage: Mapping[str, float],
    max_active: int,
    window: int,
) -> list[int]:
    """The rules read literally: sort, then walk one run at a time."""
    jobs = list(active)
    released: list[int] = []
    for c in sorted(candidates, key=lambda c: release_order_key(c, usage)):
        ours = [j for j in jobs if not j.by_hand]
        if len(ours) >= max_active or sum(j.pending for j in ours) >= window:
            break
        if _fits(c, jobs, quotas):
            jobs.append(_as_active(c))
            released.append(c.run_id)
    return released


@pytest.mark.parametrize("seed", range(300))
def test_random_labs(seed: int) -> None:
    candidates, active, quotas, usage, max_active, window = random_lab(seed)
    decision = plan(candidates, active, quotas, usage, max_active=max_active, window=window)
    by_id = {c.run_id: c for c in candidates}

    assert decision.order == [
        c.run_id for c in sorted(candidates, key=lambda c: release_order_key(c, usage))
    ]
    assert set(decision.release) <= set(by_id)
    assert decision.release == [r for r in decision.order if r in set(decision.release)]
    assert set(decision.waiting) == set(by_id) - set(decision.release)
    assert decision.release == reference_release(
        candidates, active, quotas, usage, max_active, window
    )

    # No limit is taken past what it was: a scope already over its limit (jobs by hand) gains
    # nothing, any other stays within it.
    released = [_as_active(by_id[r]) for r in decision.release]
    after = [*active, *released]
    ours_before = [j for j in active if not j.by_hand]
    if released:
        assert len(ours_before) + len(released) <= max_active
        assert sum(j.pending for j in ours_before) + len(released) <= window
    scopes = [(LAB, quotas.lab)]
    scopes += [(Scope("user", o), quotas.for_user(o)) for o in {c.owner for c in candidates}]
    scopes += [(Scope("partition", p), limits) for p, limits in quotas.partitions.items()]
    for scope, limits in scopes:
        before, now = _totals(active, scope), _totals(after, scope)
        for resource in RESOURCES:
            limit = getattr(limits, resource)
            if limit is not None and now[resource] > before[resource]:
                assert now[resource] <= limit, (scope, resource)

    # Nothing left behind: every waiting run is over a limit now, or the window or max_active
    # is full; and its reason says which kind.
    ours_after = [j for j in after if not j.by_hand]
    full = len(ours_after) >= max_active or sum(j.pending for j in ours_after) >= window
    for run_id, reason in decision.waiting.items():
        c = by_id[run_id]
        if not _fits(c, [], quotas):
            assert reason.startswith("needs "), reason
            assert reason.endswith("it can never start until the quota grows")
        elif not full:
            assert not _fits(c, after, quotas)
            assert "quota" in reason, reason
        else:
            assert reason.split(":")[0] in {
                "release window full",
                "run limit full",
                "lab job quota full",
                "lab CPU quota",
                "lab CPU quota full",
                "lab GPU quota",
                "lab GPU quota full",
            } or reason.startswith(("your ", "partition ", "default partition ")), reason
