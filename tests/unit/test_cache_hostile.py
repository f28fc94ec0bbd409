"""The data cache is on scratch, where jobs write: its manifests are validated, never trusted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from api_fakes import FakeEngine, make_api, ok

from hpcops.access import Caller
from hpcops.data.cache import CacheError, ContentCache
from hpcops.data.gc import collect_garbage
from hpcops.data.usage import VersionUse
from hpcops.states import RunState
from hpcops.store import Run, Store

DIR_MD5 = "0123456789abcdef0123456789abcdef.dir"
FILE_MD5 = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def cache(tmp_path: Path) -> ContentCache:
    c = ContentCache(tmp_path / "cache")
    c.ensure()
    return c


def _manifest(cache: ContentCache, content: object, md5: str = DIR_MD5) -> None:
    _write_manifest(cache, json.dumps(content), md5)


def _write_manifest(cache: ContentCache, text: str, md5: str = DIR_MD5) -> None:
    path = cache.object_path(md5)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    "md5", ["../../../../etc/passwd", "/etc/passwd", "zz" * 16, "", "0" * 31, FILE_MD5 + "x"]
)
def test_names_that_are_not_md5s_never_become_paths(cache: ContentCache, md5: str) -> None:
    with pytest.raises(CacheError, match="not a DVC md5"):
        cache.object_path(md5)


@pytest.mark.parametrize(
    "bad_entry",
    [
        {"relpath": "a.txt", "md5": "../../../../../etc/shadow"},
        {"relpath": "a.txt", "md5": FILE_MD5 + ".dir"},
        {"relpath": "../escape.txt", "md5": FILE_MD5},
        {"relpath": "a.txt"},
        "just a string",
        ["a", "list"],
    ],
)
def test_a_manifest_entry_that_is_not_a_file_and_an_md5_is_refused(
    cache: ContentCache, bad_entry: object
) -> None:
    _manifest(cache, [{"relpath": "ok.txt", "md5": FILE_MD5}, bad_entry])
    with pytest.raises(CacheError, match="bad entry"):
        cache.entries(DIR_MD5)


@pytest.mark.parametrize("content", [{"relpath": "a", "md5": FILE_MD5}, "text", 42, None])
def test_a_manifest_that_is_json_but_not_a_list_is_that_versions_problem(
    cache: ContentCache, content: object
) -> None:
    _manifest(cache, content)
    with pytest.raises(CacheError, match="not a list"):
        cache.entries(DIR_MD5)
    # gc asks what the version uses: a bad manifest knows nothing, so nothing is kept for it
    # (the version stages again when needed) and gc goes on for the other versions.
    assert cache.objects_of(DIR_MD5) == set()


def test_a_manifest_that_is_a_link_is_not_read(cache: ContentCache, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps([{"relpath": "a", "md5": FILE_MD5}]))
    path = cache.object_path(DIR_MD5)
    path.parent.mkdir(parents=True)
    path.symlink_to(elsewhere)
    with pytest.raises(CacheError, match="unreadable"):
        cache.entries(DIR_MD5)


def test_a_good_manifest_still_reads(cache: ContentCache) -> None:
    _manifest(cache, [{"relpath": "sub/a.txt", "md5": FILE_MD5}])
    entries = cache.entries(DIR_MD5)
    assert entries is not None and [(e.relpath, e.md5) for e in entries] == [
        ("sub/a.txt", FILE_MD5)
    ]


def test_gc_leaves_names_it_did_not_make_alone(cache: ContentCache) -> None:
    odd = cache.objects / "ab" / "not-an-md5"
    odd.parent.mkdir(parents=True)
    odd.write_text("x")
    old = time.time() - 10 * 86400
    os.utime(odd, (old, old))
    cache.remove_except(set(), min_age_s=0)
    assert odd.exists()


NESTED = "[" * 100_000  # past json's recursion limit: RecursionError, which is no ValueError
GOOD_DIR_MD5 = "00112233445566778899aabbccddeeff.dir"


def test_a_manifest_nested_past_jsons_limit_is_that_versions_problem(
    cache: ContentCache,
) -> None:
    _write_manifest(cache, NESTED)
    with pytest.raises(CacheError, match="unreadable"):
        cache.entries(DIR_MD5)
    assert cache.objects_of(DIR_MD5) == set()


def test_gc_goes_on_past_a_version_whose_manifest_is_nested_too_deep(
    cache: ContentCache,
) -> None:
    _write_manifest(cache, NESTED)  # a version a queued run needs: gc asks what it uses
    old = cache.object_path(FILE_MD5)
    old.parent.mkdir(parents=True)
    old.write_text("no version uses this\n")
    long_ago = time.time() - 10 * 86400
    os.utime(old, (long_ago, long_ago))
    outcome = collect_garbage(
        cache,
        lambda: {DIR_MD5: VersionUse(DIR_MD5, needed=True)},
        older_than_s=86400.0,
        max_bytes=None,
        grace_s=3600.0,
        dry_run=False,
    )
    assert outcome.plan.keep == [DIR_MD5]
    assert not old.exists() and outcome.files_removed == 1


def _run_using(md5: str, when: float) -> Run:
    version = {"md5": md5, "path": "data/ds", "repo": "r", "size": 10, "nfiles": 1}
    return Run(
        name="train",
        experiment="e",
        owner="ana",
        owner_uid=5001,
        priority=5,
        state=RunState.QUEUED.value,
        spec_yaml="name: train",
        spec_hash="0" * 16,
        created_at=when,
        updated_at=when,
        data_json=json.dumps([version]),
    )


def test_cache_ls_lists_a_version_with_a_bad_manifest_as_bad_and_the_others_as_they_are(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "hpcops.db")
    server = make_api(tmp_path, FakeEngine(store), store)
    cache = ContentCache(tmp_path / "cache")  # the one make_api gives the daemon
    cache.ensure()
    _write_manifest(cache, NESTED)
    _manifest(cache, [{"relpath": "a", "md5": FILE_MD5}], GOOD_DIR_MD5)
    store.add_run(_run_using(DIR_MD5, 2000.0), actor="ana")
    store.add_run(_run_using(GOOD_DIR_MD5, 1000.0), actor="ana")
    listed = ok(server, Caller(uid=5001, name="ana"), "cache_ls")
    assert [(v["md5"], v["in_cache"]) for v in listed] == [
        (DIR_MD5, "bad"),
        (GOOD_DIR_MD5, "partial"),
    ]
    assert DIR_MD5 in listed[0]["problem"] and "unreadable" in listed[0]["problem"]
    assert "problem" not in listed[1]


def test_gc_never_follows_a_shard_that_is_a_link(cache: ContentCache, tmp_path: Path) -> None:
    # A job makes files/md5/ab a link to a directory of its choosing, holding an old file named
    # like an object: gc must not delete there (nor count it, nor list it).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / ("cd" * 15)
    victim.write_text("not the cache's\n")
    old = time.time() - 10 * 86400
    os.utime(victim, (old, old))
    (cache.objects / "ab").symlink_to(elsewhere)
    assert cache.remove_except(set(), min_age_s=0) == (0, 0)
    assert victim.exists()
    assert cache.all_objects() == set() and cache.total_size() == 0


def test_gc_still_removes_real_objects_and_their_verified_marks(cache: ContentCache) -> None:
    _manifest(cache, [{"relpath": "a", "md5": FILE_MD5}])
    path = cache.object_path(DIR_MD5)
    old = time.time() - 10 * 86400
    os.utime(path, (old, old))
    cache.mark_verified(DIR_MD5)
    assert cache.all_objects() == {DIR_MD5}
    files, freed = cache.remove_except(set(), min_age_s=3600)
    assert (files, freed > 0) == (1, True)
    assert not path.exists() and not cache.is_verified(DIR_MD5)


def test_gc_never_follows_a_verified_directory_that_is_a_link(
    cache: ContentCache, tmp_path: Path
) -> None:
    _manifest(cache, [{"relpath": "a", "md5": FILE_MD5}])
    old = time.time() - 10 * 86400
    os.utime(cache.object_path(DIR_MD5), (old, old))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / DIR_MD5).write_text("not the cache's\n")
    (cache.root / "verified").symlink_to(elsewhere)
    assert cache.remove_except(set(), min_age_s=3600)[0] == 1
    assert (elsewhere / DIR_MD5).exists()
