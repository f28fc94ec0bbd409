"""The data cache's garbage collection (hpcops.data.gc) on a real cache in a temporary directory:
the plan made while the cache is ours alone, needed versions kept, young objects spared."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from hpcops.data.cache import CacheError, ContentCache
from hpcops.data.gc import collect_garbage
from hpcops.data.usage import VersionUse

DAY = 86400.0
NOW = 100 * DAY


def _put(cache: ContentCache, content: bytes, suffix: str = "", *, age_s: float = DAY) -> str:
    md5 = hashlib.md5(content, usedforsecurity=False).hexdigest() + suffix
    path = cache.object_path(md5)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    when = path.stat().st_mtime - age_s
    os.utime(path, (when, when))
    return md5


def _version(cache: ContentCache, files: dict[str, bytes], *, age_s: float = DAY) -> str:
    entries = [
        {"md5": _put(cache, data, age_s=age_s), "relpath": rel}
        for rel, data in sorted(files.items())
    ]
    return _put(cache, json.dumps(entries).encode(), ".dir", age_s=age_s)


@pytest.fixture
def cache(tmp_path: Path) -> ContentCache:
    c = ContentCache(tmp_path / "cache")
    c.ensure()
    return c


def _uses(old: str, needed: str) -> dict[str, VersionUse]:
    return {
        old: VersionUse(old, paths={"data/old"}, size=10, last_used=NOW - 30 * DAY),
        needed: VersionUse(needed, paths={"data/new"}, size=10, last_used=0.0, needed=True),
    }


def test_a_dry_run_plans_and_removes_nothing(cache: ContentCache) -> None:
    old = _version(cache, {"a": b"old\n"})
    needed = _version(cache, {"b": b"needed\n"})
    before = cache.all_objects()
    outcome = collect_garbage(
        cache,
        lambda: _uses(old, needed),
        older_than_s=7 * DAY,
        max_bytes=None,
        grace_s=0.0,
        dry_run=True,
        clock=lambda: NOW,
    )
    assert outcome.plan.remove == [old] and outcome.plan.keep == [needed]
    assert (outcome.files_removed, outcome.bytes_freed) == (0, 0)
    assert cache.all_objects() == before


def test_gc_removes_what_no_kept_version_uses_and_spares_young_objects(
    cache: ContentCache,
) -> None:
    old = _version(cache, {"a": b"old\n", "shared": b"shared\n"})
    needed = _version(cache, {"b": b"needed\n", "shared": b"shared\n"})
    young = _put(cache, b"a fetch in progress\n", age_s=0.0)  # no manifest names it yet
    outcome = collect_garbage(
        cache,
        lambda: _uses(old, needed),
        older_than_s=7 * DAY,
        max_bytes=None,
        grace_s=3600.0,
        dry_run=False,
        clock=lambda: NOW,
    )
    assert outcome.plan.remove == [old]
    left = cache.all_objects()
    assert cache.objects_of(needed) <= left, "a needed version keeps every object"
    assert old not in left and young in left
    assert outcome.files_removed == 2  # the old manifest and its own file; not the shared one
    assert outcome.bytes_freed > 0


def test_the_plan_is_made_while_no_stager_can_start(cache: ContentCache) -> None:
    seen: list[bool] = []

    def read_uses() -> dict[str, VersionUse]:
        # flock is per open file: a second exclusive lock fails while gc holds the cache
        try:
            with cache.exclusive(wait_s=0.0):
                seen.append(False)
        except CacheError:
            seen.append(True)
        return {}

    collect_garbage(cache, read_uses, older_than_s=0.0, max_bytes=None, grace_s=0.0, dry_run=False)
    assert seen == [True]


def test_a_busy_cache_is_a_clear_error(cache: ContentCache) -> None:
    with cache.in_use(), pytest.raises(CacheError, match="data is being staged"):
        collect_garbage(
            cache,
            dict,
            older_than_s=0.0,
            max_bytes=None,
            grace_s=0.0,
            dry_run=False,
            wait_s=0.3,
        )
