"""The data cache is on scratch, where jobs write: its manifests are validated, never trusted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from hpcops.data.cache import CacheError, ContentCache

DIR_MD5 = "0123456789abcdef0123456789abcdef.dir"
FILE_MD5 = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def cache(tmp_path: Path) -> ContentCache:
    c = ContentCache(tmp_path / "cache")
    c.ensure()
    return c


def _manifest(cache: ContentCache, content: object) -> None:
    path = cache.object_path(DIR_MD5)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


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
