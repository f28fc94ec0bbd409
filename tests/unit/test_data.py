"""Data versions, the content cache and gc decisions, without DVC or Slurm."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from hpcops.data.cache import CacheError, ContentCache
from hpcops.data.usage import RunVersions, VersionUse, plan_gc, version_uses
from hpcops.data.versions import DataVersionError, parse_dvc_file

# What `dvc add data/ds` wrote (DVC 3.67), and a single file's.
DIR_DVC = """outs:
- md5: 3b4d9879fdfb0cb6cedd91bca0746737.dir
  size: 1000391
  nfiles: 51
  hash: md5
  path: ds
"""
FILE_DVC = """outs:
- md5: 5a6af134513552a1c6a4cb653b4f8db6
  size: 1000000
  hash: md5
  path: big.bin
"""


def test_a_dvc_file_gives_the_version() -> None:
    assert parse_dvc_file(DIR_DVC, "ds.dvc") == (
        "3b4d9879fdfb0cb6cedd91bca0746737.dir",
        1000391,
        51,
    )
    assert parse_dvc_file(FILE_DVC, "big.bin.dvc") == (
        "5a6af134513552a1c6a4cb653b4f8db6",
        1000000,
        1,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("outs: [", "not valid YAML"),
        ("stages: {}", "exactly one DVC output"),
        ("outs: [{path: ds}, {path: other}]", "exactly one DVC output"),
        ("outs: [{path: ds, md5: 'not-a-hash'}]", "no md5"),
    ],
)
def test_a_bad_dvc_file_is_named(text: str, message: str) -> None:
    with pytest.raises(DataVersionError, match=message):
        parse_dvc_file(text, "ds.dvc")


def _md5(data: bytes) -> hashlib._Hash:
    return hashlib.md5(data, usedforsecurity=False)  # DVC's content address, not a secret


def _put(cache: ContentCache, content: bytes, suffix: str = "") -> str:
    md5 = _md5(content).hexdigest() + suffix
    path = cache.object_path(md5)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return md5


@pytest.fixture
def cache(tmp_path: Path) -> ContentCache:
    c = ContentCache(tmp_path / "cache")
    c.ensure()
    return c


def _version(cache: ContentCache, files: dict[str, bytes]) -> str:
    entries = [{"md5": _put(cache, data), "relpath": rel} for rel, data in sorted(files.items())]
    return _put(cache, json.dumps(entries).encode(), ".dir")


def test_a_view_is_a_read_only_copy_of_exactly_the_version(
    cache: ContentCache, tmp_path: Path
) -> None:
    md5 = _version(cache, {"a.txt": b"a\n", "sub/b.txt": b"b\n"})
    assert cache.missing(md5) == []
    dest = tmp_path / "run" / "data"
    assert cache.make_view(md5, dest) == 2
    assert (dest / "sub" / "b.txt").read_bytes() == b"b\n"
    assert os.stat(dest / "a.txt").st_mode & 0o777 == 0o444
    assert os.stat(dest / "sub").st_mode & 0o777 == 0o555
    # Not a hardlink: changing the view (as its owner may) leaves the cache alone.
    (dest / "a.txt").chmod(0o644)
    (dest / "a.txt").write_bytes(b"changed\n")
    assert cache.verify(cache.all_objects()) == []
    # A second staging replaces an earlier attempt's view, read-only as it is.
    assert cache.make_view(md5, dest) == 2
    assert (dest / "a.txt").read_bytes() == b"a\n"


def test_an_incomplete_or_corrupt_version_is_refused(cache: ContentCache, tmp_path: Path) -> None:
    md5 = _version(cache, {"a.txt": b"a\n", "b.txt": b"b\n"})
    victim = cache.object_path(_md5(b"b\n").hexdigest())
    victim.write_bytes(b"corrupt\n")
    assert cache.verify(cache.all_objects()) == [_md5(b"b\n").hexdigest()]
    assert not victim.exists(), "a corrupt object is removed"
    assert [e.relpath for e in cache.missing(md5) or []] == ["b.txt"]
    with pytest.raises(CacheError, match="not complete"):
        cache.make_view(md5, tmp_path / "view")
    evil = _put(cache, json.dumps([{"md5": "0" * 32, "relpath": "../escape"}]).encode(), ".dir")
    with pytest.raises(CacheError, match="bad entry"):
        cache.entries(evil)


def _run(run_id: int, state: str, md5: str, when: float, size: int = 100) -> RunVersions:
    data = [{"md5": md5, "path": "data/ds", "repo": "/r", "size": size, "nfiles": 3}]
    return RunVersions(run_id, state, json.dumps(data), last_used=when)


def test_gc_never_removes_what_a_queued_or_active_run_needs() -> None:
    day = 86400.0
    uses = version_uses(
        [
            _run(1, "COMPLETED", "old", when=0.0),
            _run(2, "COMPLETED", "recent", when=9 * day),
            _run(3, "QUEUED", "queued", when=0.0),
            _run(4, "COMPLETED", "active", when=0.0),
            _run(5, "RUNNING", "active", when=0.0),
        ]
    )
    assert isinstance(uses["active"], VersionUse) and uses["active"].runs == [4, 5]
    assert uses["queued"].needed and uses["active"].needed and not uses["old"].needed
    plan = plan_gc(uses, now=10 * day, older_than_s=5 * day, max_bytes=None)
    assert plan.remove == ["old"]
    plan = plan_gc(uses, now=10 * day, older_than_s=None, max_bytes=0)
    assert sorted(plan.remove) == ["old", "recent"], "over the size: LRU, needed ones stay"
    plan = plan_gc(uses, now=10 * day, older_than_s=None, max_bytes=300)
    assert plan.remove == ["old"], "the rest fits after the least recently used goes"
