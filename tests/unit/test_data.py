"""Data versions, the content cache and gc decisions, without DVC or Slurm."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
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


def test_a_dvc_2_file_is_refused_with_the_way_to_migrate_it() -> None:
    # DVC 2.x wrote no `hash: md5`; its objects are at the cache's root, not in files/md5, so
    # staging one could only fail ("DVC could not fetch 51 file(s)").
    dvc2 = DIR_DVC.replace("  hash: md5\n", "")
    with pytest.raises(DataVersionError, match=r"ds\.dvc at 0123abcd was written by DVC 2") as e:
        parse_dvc_file(dvc2, "ds.dvc at 0123abcd")
    assert "dvc cache migrate --dvc-files" in str(e.value)


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


def _partial_copy(path: Path) -> None:
    """What a stager killed in the middle of a view leaves: part of it, read-only."""
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "a.txt").write_bytes(b"a\n")
    (path / "sub" / "a.txt").chmod(0o444)
    (path / "sub").chmod(0o555)


def test_a_killed_stagers_partial_copy_goes_with_the_next_staging(
    cache: ContentCache, tmp_path: Path
) -> None:
    md5 = _version(cache, {"a.txt": b"a\n"})
    run = tmp_path / "run"
    dest = run / "data" / "ds"
    killed = [run / "data" / ".ds.staging-4242", run / "data" / ".ds.staging"]
    for path in killed:
        _partial_copy(path)
    # Not staging copies of this view: another view's, a name that only looks like one, and a
    # link (removed as a link, never followed).
    others = [run / "data" / ".other.staging-1", run / "data" / ".ds.staging-x"]
    for path in others:
        path.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the run's\n")
    (run / "data" / ".ds.staging-99").symlink_to(elsewhere)
    assert cache.make_view(md5, dest) == 1
    assert (dest / "a.txt").read_bytes() == b"a\n"
    left = sorted(p.name for p in (run / "data").iterdir())
    assert left == [".ds.staging-x", ".ds.staging.lock", ".other.staging-1", "ds"]
    assert (elsewhere / "keep.txt").exists()


def test_a_second_stager_of_the_same_view_waits_for_the_first(
    cache: ContentCache, tmp_path: Path
) -> None:
    # Slurm may run a requeued job twice: the second stager must not take the first's copy
    # for a killed one's and remove it under it.
    md5 = _version(cache, {"a.txt": b"a\n"})
    dest = tmp_path / "run" / "data" / "ds"
    dest.parent.mkdir(parents=True)
    done = threading.Event()

    def stage_again() -> None:
        cache.make_view(md5, dest)
        done.set()

    with (dest.parent / ".ds.staging.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first stager, copying
        second = threading.Thread(target=stage_again)
        second.start()
        assert not done.wait(0.3) and not dest.exists()
    second.join(timeout=10)
    assert done.is_set() and (dest / "a.txt").read_bytes() == b"a\n"
