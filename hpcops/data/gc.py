"""The data cache's garbage collection: decide which versions go, then remove their objects.

The decision is pure (`hpcops.data.usage.plan_gc`: versions no queued or active run needs,
unused for long or over a size); this module applies it to the cache. The caller says how to
read the lab's versions (`read_uses`), so the plan is made from the database as it is at the
moment the cache is ours alone, and this module needs nothing of the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hpcops.data.cache import ContentCache
from hpcops.data.usage import GcPlan, VersionUse, plan_gc

# How long a gc waits for stagers to let go of the cache before it says "try again later".
GC_WAIT_S = 10.0


@dataclass(frozen=True)
class GcOutcome:
    plan: GcPlan
    uses: Mapping[str, VersionUse]  # every version the plan was made from, by md5
    files_removed: int = 0
    bytes_freed: int = 0


def collect_garbage(
    cache: ContentCache,
    read_uses: Callable[[], dict[str, VersionUse]],
    *,
    older_than_s: float | None,
    max_bytes: int | None,
    grace_s: float,
    dry_run: bool,
    clock: Callable[[], float] = time.time,
    wait_s: float = GC_WAIT_S,
) -> GcOutcome:
    """Plan, and unless `dry_run` remove every object no kept version uses and older than
    `grace_s`. CacheError when stagers keep the cache busy for `wait_s`."""

    def plan(uses: dict[str, VersionUse]) -> GcPlan:
        return plan_gc(uses, now=clock(), older_than_s=older_than_s, max_bytes=max_bytes)

    if dry_run:
        uses = read_uses()
        return GcOutcome(plan(uses), uses)
    # Alone in the cache (no stager at work), and the plan made inside: a run queued a moment
    # ago counts, and no stager is between its look and its copy.
    with cache.exclusive(wait_s=wait_s):
        uses = read_uses()
        decided = plan(uses)
        keep: set[str] = set()
        for md5 in decided.keep:
            keep |= cache.objects_of(md5)
        files, freed = cache.remove_except(keep, min_age_s=grace_s)
    return GcOutcome(decided, uses, files_removed=files, bytes_freed=freed)
