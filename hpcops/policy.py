"""Release decisions, as pure functions of the queue, the jobs in Slurm and the lab's quotas.

hpcops keeps the lab's queue itself and lets only a small window of runs pend in Slurm, so a
priority change in hpcops' queue still matters. A run that does not fit a limit waits here; it
never fails for it (docs/design.md, decision 5).

`plan_release` walks the queue in release order (`release_order_key`) and releases every run that
fits, counting the lab's jobs in Slurm plus what it has released so far:

    the lab's quotas       every job of the lab in Slurm, hpcops' or submitted by hand
    the owner's quotas     `Quotas.for_user`: `users[owner]` field by field, else `per_user`
    the partition's quotas every job of the lab in that partition ("" = the default partition)
    max_active             hpcops' own jobs in Slurm, pending or running
    pending_window         hpcops' own jobs pending in Slurm; a run just released counts as pending
    the group's limit      `group_limits[group]`: a sweep's max_parallel, its points in Slurm,
                           pending or running (`Candidate.group`, `Active.group`: the sweep's id)

A run that does not fit is skipped and a later, smaller one may still go; once max_active or the
window is full, nothing more is released. A sweep's point is a run like any other: priority, fair
share and every quota apply to it as to a single run; its group's limit comes on top, and holds up
no run of another group.

Speed. The daemon plans every tick with up to ~10,000 queued runs. Sorting 10,000 candidates by
`release_order_key` alone takes 4 ms (given in run-id order) to 5.3 ms (shuffled) on the 2-CPU
dev VM, the whole budget of a tick, so the release decision does not sort: it groups the
candidates once by priority and by all that decides whether a run fits (owner, partition, CPUs,
GPUs, and the sweep for a sweep with a limit), and merges the groups by their first run. A group
that does not fit is done: its later runs ask for the same of a lab, and of a sweep, that only fill
up during the walk. A sweep without a limit is not part of the key, so its points group with the
owner's single runs and a queue without limited sweeps plans exactly as fast as one without sweeps.
The full order and the reasons are computed when first read, from the state the walk left, and then
kept (tests/benchmarks/bench_policy.py has the figures).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal

__all__ = [
    "LAB",
    "RESOURCES",
    "Active",
    "Candidate",
    "Decision",
    "Limits",
    "Quotas",
    "Resource",
    "Scope",
    "describe_usage",
    "plan_release",
    "release_order_key",
]

Resource = Literal["jobs", "cpus", "gpus"]
RESOURCES: tuple[Resource, ...] = ("jobs", "cpus", "gpus")
_UNIT: dict[Resource, str] = {"jobs": "job", "cpus": "CPU", "gpus": "GPU"}
# How many users a reason names before "+N more": a reason is one line of `hpcops ls`.
_NAMES_SHOWN = 5


# slots: the planner reads these attributes tens of thousands of times per tick, and slot access
# is measurably faster than a per-instance dict on CPython 3.11.
@dataclass(frozen=True, slots=True)
class Limits:
    """At most this much at once; None = no limit."""

    jobs: int | None = None
    cpus: int | None = None
    gpus: int | None = None


@dataclass(frozen=True)
class Quotas:
    lab: Limits = Limits()
    """The whole lab, concurrently in Slurm."""
    per_user: Limits = Limits()
    """Every user's default."""
    users: Mapping[str, Limits] = field(default_factory=dict)
    """Per-user overrides of `per_user`, field by field where set."""
    partitions: Mapping[str, Limits] = field(default_factory=dict)
    """Per partition, lab-wide; "" is the cluster's default partition."""

    def for_user(self, owner: str) -> Limits:
        """The owner's limits: each field of the override where set, else the default's. An
        override therefore cannot lift a default limit to none; give it a large number."""
        override = self.users.get(owner)
        if override is None:
            return self.per_user
        default = self.per_user
        return Limits(
            jobs=default.jobs if override.jobs is None else override.jobs,
            cpus=default.cpus if override.cpus is None else override.cpus,
            gpus=default.gpus if override.gpus is None else override.gpus,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A run waiting in hpcops' queue (state QUEUED). Run ids are unique."""

    run_id: int
    owner: str
    priority: int
    queued_at: float  # epoch seconds: submission order
    cpus: int
    gpus: int
    partition: str | None  # None: the cluster's default partition, counted under ""
    group: int | None = None  # the sweep's id for a sweep's point; None: a single run


@dataclass(frozen=True, slots=True)
class Active:
    """A job of the lab in Slurm now, pending or running, hpcops' own or submitted by hand."""

    owner: str  # the run's owner; for a job submitted by hand, Slurm's user
    cpus: int
    gpus: int
    partition: str | None
    pending: bool  # pending in Slurm (counts toward the release window) or running
    by_hand: bool = False
    group: int | None = None  # the sweep's id for a sweep's point; None: a single run


@dataclass(frozen=True)
class Scope:
    """Where a limit applies: the whole lab, one user, or one partition ("" = the default)."""

    kind: Literal["lab", "user", "partition"]
    name: str = ""

    def holds(self, owner: str, partition: str | None) -> bool:
        if self.kind == "user":
            return owner == self.name
        if self.kind == "partition":
            return (partition or "") == self.name
        return True

    @property
    def label(self) -> str:
        """How a reason names the scope's quota: "lab", "your", "partition gpu"."""
        if self.kind == "user":
            return "your"
        if self.kind == "partition":
            return f"partition {self.name}" if self.name else "default partition"
        return "lab"


LAB = Scope("lab")


def release_order_key(c: Candidate, usage: Mapping[str, float]) -> tuple[int, float, float, int]:
    """Higher priority first; then fair share, the owner with the least recent usage first (an
    owner missing from `usage` has used nothing); then submission time; then run id."""
    return (-c.priority, usage.get(c.owner, 0.0), c.queued_at, c.run_id)


def describe_usage(active: Iterable[Active], resource: Resource, limit_scope: Scope) -> str:
    """Who uses `resource` within `limit_scope`, for a reason: "alice (2), bob (2)". Largest first,
    then by name; at most five names, then "+N more"."""
    amounts: dict[str, int] = {}
    for job in active:
        if limit_scope.holds(job.owner, job.partition):
            amount = 1 if resource == "jobs" else getattr(job, resource)
            if amount:
                amounts[job.owner] = amounts.get(job.owner, 0) + amount
    if not amounts:
        return "nobody"
    ranked = sorted(amounts.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{owner} ({amount})" for owner, amount in ranked[:_NAMES_SHOWN])
    hidden = len(ranked) - _NAMES_SHOWN
    return f"{shown}, +{hidden} more" if hidden > 0 else shown


@dataclass(frozen=True)
class Decision:
    """What to release now, and why everything else waits.

    `waiting` and `order` are computed when first read and then kept: the release decision itself
    needs neither a sorted queue nor 10,000 formatted strings. Two threads reading one decision at
    once may both compute a cached part; they get the same answer.
    """

    release: list[int]
    """Run ids to submit now, in release order."""
    waiting: Mapping[int, str]
    """Every candidate not released -> a one-line reason; iterates in release order."""
    _plan: _Plan = field(repr=False, compare=False)

    @property
    def order(self) -> list[int]:
        """Every candidate's run id in release order: the lab's queue as `hpcops ls` shows it."""
        return list(self._plan.order())


def plan_release(
    candidates: Sequence[Candidate],
    active: Sequence[Active],
    quotas: Quotas,
    usage: Mapping[str, float],
    *,
    max_active: int,
    pending_window: int,
    group_limits: Mapping[int, int] | None = None,
) -> Decision:
    """Which queued runs to submit now, in the lab's order and within its quotas (module doc).

    `group_limits`: group (a sweep's id) -> the most of its runs in Slurm at once, pending or
    running, counting this plan's releases (the sweep's max_parallel). A group missing from it
    has no limit of its own."""
    plan = _Plan(candidates, active, quotas, usage, max_active, pending_window, group_limits or {})
    plan.walk()
    return Decision(release=list(plan.released), waiting=_Reasons(plan), _plan=plan)


class _Tally:
    """Jobs, CPUs and GPUs in use within one scope."""

    __slots__ = ("cpus", "gpus", "jobs")

    def __init__(self) -> None:
        self.jobs = 0
        self.cpus = 0
        self.gpus = 0

    def add(self, cpus: int, gpus: int) -> None:
        self.jobs += 1
        self.cpus += cpus
        self.gpus += gpus

    def amount(self, resource: Resource) -> int:
        return int(getattr(self, resource))

    def over(self, limits: Limits, cpus: int, gpus: int) -> Resource | None:
        """The first resource that one more job of this size would take past `limits`."""
        if limits.jobs is not None and self.jobs + 1 > limits.jobs:
            return "jobs"
        if limits.cpus is not None and self.cpus + cpus > limits.cpus:
            return "cpus"
        if limits.gpus is not None and self.gpus + gpus > limits.gpus:
            return "gpus"
        return None


# The walk's grouping key: (priority, owner, partition, CPUs, GPUs), and the group when it has a
# limit.
_Key = tuple[int, str, str | None, int, int] | tuple[int, str, str | None, int, int, int]
# Nothing in use: a request that is over a limit even here can never start.
_NOTHING = _Tally()
_BY_TIME = attrgetter("queued_at", "run_id")


class _Plan:
    """The walk, and what it leaves behind for the reasons and the order."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        active: Sequence[Active],
        quotas: Quotas,
        usage: Mapping[str, float],
        max_active: int,
        pending_window: int,
        group_limits: Mapping[int, int],
    ) -> None:
        # Copies, cheap next to the walk, so that the lazy parts see what the walk saw.
        self.candidates = tuple(candidates)
        self.usage = dict(usage)
        self.active = tuple(active)
        self.quotas = quotas
        self.max_active = max_active
        self.pending_window = pending_window
        self.group_limits = dict(group_limits)
        # Runs in Slurm of each group with a limit, with this plan's releases.
        self.in_group: dict[int, int] = dict.fromkeys(self.group_limits, 0)
        self.lab = _Tally()
        self.users: dict[str, _Tally] = {}
        self.partitions: dict[str, _Tally] = {}
        self.ours = 0  # hpcops' jobs in Slurm, with this plan's releases
        self.ours_pending = 0
        for job in active:
            self._count(job.owner, job.partition or "", job.cpus, job.gpus)
            if not job.by_hand:
                self.ours += 1
                self.ours_pending += job.pending
            if job.group in self.in_group:
                self.in_group[job.group] += 1
        self.released: list[int] = []
        self.released_runs: list[Candidate] = []
        self._user_limits: dict[str, Limits] = {}
        # Set when max_active or the window filled: the key of the run that filled it, or None
        # when they were full before the walk. Runs after it in the order were never reached.
        self.full: bool = False
        self.filled_by: tuple[int, float, float, int] | None = None
        self._order: list[int] | None = None
        self._rank: dict[int, int] | None = None
        self._by_id: dict[int, Candidate] | None = None
        self._users_of: dict[Resource, str] = {}

    def _count(self, owner: str, partition: str, cpus: int, gpus: int) -> None:
        self.lab.add(cpus, gpus)
        user = self.users.get(owner)
        if user is None:
            user = self.users[owner] = _Tally()
        user.add(cpus, gpus)
        part = self.partitions.get(partition)
        if part is None:
            part = self.partitions[partition] = _Tally()
        part.add(cpus, gpus)

    def limits_of(self, owner: str) -> Limits:
        limits = self._user_limits.get(owner)
        if limits is None:
            limits = self._user_limits[owner] = self.quotas.for_user(owner)
        return limits

    def group_full(self, c: Candidate) -> bool:
        """`c`'s group has a limit, and as many of its runs in Slurm as the limit allows."""
        group = c.group
        if group is None:
            return False
        limit = self.group_limits.get(group)
        return limit is not None and self.in_group[group] >= limit

    def blocking(self, c: Candidate, *, alone: bool = False) -> tuple[Scope, Resource] | None:
        """The first quota, lab then user then partition, that `c` does not fit now (or, with
        `alone`, would not fit with nothing else in Slurm). Its group's limit is `group_full`."""
        partition = c.partition or ""
        lab = _NOTHING if alone else self.lab
        resource = lab.over(self.quotas.lab, c.cpus, c.gpus)
        if resource is not None:
            return LAB, resource
        user = _NOTHING if alone else self.users.get(c.owner, _NOTHING)
        resource = user.over(self.limits_of(c.owner), c.cpus, c.gpus)
        if resource is not None:
            return Scope("user", c.owner), resource
        limits = self.quotas.partitions.get(partition)
        if limits is not None:
            part = _NOTHING if alone else self.partitions.get(partition, _NOTHING)
            resource = part.over(limits, c.cpus, c.gpus)
            if resource is not None:
                return Scope("partition", partition), resource
        return None

    def walk(self) -> None:
        room = min(self.max_active - self.ours, self.pending_window - self.ours_pending)
        if room <= 0:
            self.full = True
            return
        # Group by everything that decides the order among equals (priority, owner) and whether a
        # run fits (owner, partition, CPUs, GPUs; the sweep, when it has a limit): one pass over
        # the queue in Python. Without limited sweeps, the loop of a queue without sweeps.
        groups: dict[_Key, list[Candidate]] = {}
        key: _Key
        limited = self.group_limits
        if not limited:
            for c in self.candidates:
                key = (c.priority, c.owner, c.partition, c.cpus, c.gpus)
                group = groups.get(key)
                if group is None:
                    groups[key] = [c]
                else:
                    group.append(c)
        else:
            for c in self.candidates:
                if c.group in limited:
                    key = (c.priority, c.owner, c.partition, c.cpus, c.gpus, c.group)
                else:
                    key = (c.priority, c.owner, c.partition, c.cpus, c.gpus)
                group = groups.get(key)
                if group is None:
                    groups[key] = [c]
                else:
                    group.append(c)
        # Owners of equal priority and equal usage interleave by time, so they share a level.
        levels: dict[tuple[int, float], list[list[Candidate]]] = {}
        for (priority, owner, *_), group in groups.items():
            levels.setdefault((-priority, self.usage.get(owner, 0.0)), []).append(group)
        for level in sorted(levels):
            room = self._walk_level(level, levels[level], room)
            if room == 0:
                return

    def _walk_level(
        self, level: tuple[int, float], groups: list[list[Candidate]], room: int
    ) -> int:
        """Release from one level, merging its groups by time; returns the room left."""
        # A group that does not fit now never will: drop it before looking for its first run.
        groups = [group for group in groups if self.blocking(group[0]) is None]
        limited = bool(self.group_limits)  # else no group is ever full: spare the calls
        if limited:
            groups = [group for group in groups if not self.group_full(group[0])]
        heads = [group[0] if len(group) == 1 else min(group, key=_BY_TIME) for group in groups]
        heap = [(c.queued_at, c.run_id, i) for i, c in enumerate(heads)]
        heapq.heapify(heap)
        taken = [0] * len(groups)  # runs released from each group; its list is sorted once > 0
        while heap:
            _, _, i = heapq.heappop(heap)
            c = heads[i]
            if self.blocking(c) is not None or (limited and self.group_full(c)):
                continue  # the rest of the group asks for the same: it cannot fit either
            self._release(c)
            room -= 1
            if room == 0:
                self.full = True
                self.filled_by = (*level, c.queued_at, c.run_id)
                return 0
            group = groups[i]
            if taken[i] == 0:
                group.sort(key=_BY_TIME)
            taken[i] += 1
            if taken[i] < len(group):
                heads[i] = nxt = group[taken[i]]
                heapq.heappush(heap, (nxt.queued_at, nxt.run_id, i))
        return room

    def _release(self, c: Candidate) -> None:
        self._count(c.owner, c.partition or "", c.cpus, c.gpus)
        self.ours += 1
        self.ours_pending += 1
        if c.group in self.in_group:
            self.in_group[c.group] += 1
        self.released.append(c.run_id)
        self.released_runs.append(c)

    # --- read lazily ----------------------------------------------------------------------

    def order(self) -> list[int]:
        if self._order is None:
            usage = self.usage
            ranked = sorted(self.candidates, key=lambda c: release_order_key(c, usage))
            self._order = [c.run_id for c in ranked]
        return self._order

    def by_id(self) -> dict[int, Candidate]:
        if self._by_id is None:
            released = set(self.released)
            self._by_id = {c.run_id: c for c in self.candidates if c.run_id not in released}
        return self._by_id

    def ahead(self, c: Candidate) -> int:
        """Runs still in hpcops' queue ahead of `c`."""
        if self._rank is None:
            self._rank = {run_id: i for i, run_id in enumerate(self.order())}
        # Every run released this tick was ahead of any run that was not reached.
        return self._rank[c.run_id] - len(self.released)

    def users_of(self, resource: Resource) -> str:
        text = self._users_of.get(resource)
        if text is None:
            just_released = [
                Active(c.owner, c.cpus, c.gpus, c.partition, pending=True)
                for c in self.released_runs
            ]
            text = describe_usage([*self.active, *just_released], resource, LAB)
            self._users_of[resource] = text
        return text

    def reason(self, c: Candidate) -> str:
        # A request no amount of waiting satisfies comes first, even before a full window: it is
        # the one reason the owner has to act on.
        impossible = self.blocking(c, alone=True)
        if impossible is not None:
            scope, resource = impossible
            limit = self._limit(scope, c.owner, resource)
            quota = "your quota" if scope.kind == "user" else f"the {scope.label} quota"
            return (
                f"needs {_count(_need(c, resource), _UNIT[resource])}, more than {quota} of "
                f"{limit}: it can never start until the quota grows"
            )
        # Its sweep's own limit next: while the sweep is full, no room in the window or the
        # quotas would release this run, and the owner chose the limit.
        if self.group_full(c):
            return self._group_reason(c)
        if self.full and (
            self.filled_by is None or release_order_key(c, self.usage) > self.filled_by
        ):
            return self._full_reason(c)
        blocked = self.blocking(c)
        if blocked is not None:
            return self._quota_reason(c, *blocked)
        # Not reached by a correct walk: a run the walk saw and skipped did not fit, and the lab
        # has only filled up since. Kept so that every waiting run has a reason.
        return _place(self.ahead(c))

    def _full_reason(self, c: Candidate) -> str:
        place = _place(self.ahead(c))
        # max_active first: while it is full, a pending run starting does not make room.
        if self.ours >= self.max_active:
            return (
                f"run limit full: {self.ours}/{self.max_active} hpcops runs in Slurm "
                f"(max_active); {place}"
            )
        window = ""
        if self.ours_pending != self.pending_window or not self.pending_window:  # made smaller
            window = f" (window {self.pending_window})"
        pending = _count(self.ours_pending, "run")
        return f"release window full: {pending} pending in Slurm{window}; {place}"

    def _group_reason(self, c: Candidate) -> str:
        assert c.group is not None
        limit = self.group_limits[c.group]
        points = "point" if limit == 1 else "points"
        return (
            f"its sweep s{c.group} has {self.in_group[c.group]} of max_parallel {limit} "
            f"{points} in Slurm"
        )

    def _quota_reason(self, c: Candidate, scope: Scope, resource: Resource) -> str:
        if scope.kind == "lab":
            tally: _Tally = self.lab
            users = f" in use by {self.users_of(resource)}"
        elif scope.kind == "user":
            tally = self.users.get(c.owner, _NOTHING)
            users = " in use"
        else:
            tally = self.partitions.get(scope.name, _NOTHING)
            users = ""
        used = tally.amount(resource)
        limit = self._limit(scope, c.owner, resource)
        head = f"{scope.label} {_UNIT[resource]} quota"
        if used >= limit:
            return f"{head} full: {used}/{limit}{users}"
        return f"{head}: {used}/{limit}{users}; needs {_count(_need(c, resource), _UNIT[resource])}"

    def _limit(self, scope: Scope, owner: str, resource: Resource) -> int:
        if scope.kind == "lab":
            limits = self.quotas.lab
        elif scope.kind == "user":
            limits = self.limits_of(owner)
        else:
            limits = self.quotas.partitions[scope.name]
        limit: int | None = getattr(limits, resource)
        assert limit is not None, "a resource without a limit blocks nothing"
        return limit


class _Reasons(Mapping[int, str]):
    """Run id -> why it waits, for every candidate not released; each reason computed on access."""

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan

    def __getitem__(self, run_id: int) -> str:
        return self._plan.reason(self._plan.by_id()[run_id])

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._plan.by_id()

    def __iter__(self) -> Iterator[int]:
        waiting = self._plan.by_id()
        return (run_id for run_id in self._plan.order() if run_id in waiting)

    def __len__(self) -> int:
        return len(self._plan.candidates) - len(self._plan.released)

    def __repr__(self) -> str:
        return f"<{len(self)} waiting runs, reasons computed on access>"


def _need(c: Candidate, resource: Resource) -> int:
    return 1 if resource == "jobs" else int(getattr(c, resource))


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def _place(ahead: int) -> str:
    if ahead == 0:
        return "next in the lab's queue"
    return f"{_count(ahead, 'run')} ahead in the lab's queue"
