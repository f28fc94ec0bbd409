"""Files a job wrote are opened beneath a trusted root without following links (hpcops/transport/
beneath.py), on real files: links, FIFOs, directories, escapes, huge files, swaps after open."""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import pytest

from hpcops.transport import beneath
from hpcops.transport.beneath import UnsafeFile, open_beneath, read_beneath, read_from

WAYS = [pytest.param(True, id="openat2"), pytest.param(False, id="openat-walk")]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "run-000001"
    run.mkdir(parents=True)
    (run / "stdout.log").write_text("hello\n")
    (tmp_path / "secret").write_text("MLFLOW_TRACKING_PASSWORD=hunter2\n")
    return tmp_path / "runs"


def _read(root: Path, rel: str, use_openat2: bool, max_bytes: int = 1024) -> bytes:
    fd = open_beneath(root, PurePath(rel), use_openat2=use_openat2)
    try:
        return read_from(fd, 0, max_bytes).data
    finally:
        os.close(fd)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_a_plain_file_is_read(root: Path, use_openat2: bool) -> None:
    assert _read(root, "run-000001/stdout.log", use_openat2) == b"hello\n"


@pytest.mark.parametrize("use_openat2", WAYS)
def test_a_link_at_the_file_is_refused(root: Path, use_openat2: bool) -> None:
    log = root / "run-000001" / "stderr.log"
    log.symlink_to("/proc/self/environ")
    with pytest.raises(UnsafeFile, match="link"):
        _read(root, "run-000001/stderr.log", use_openat2)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_a_link_in_a_directory_component_is_refused(root: Path, use_openat2: bool) -> None:
    (root / "run-000002").symlink_to(root.parent)  # run-000002/secret -> the daemon's file
    with pytest.raises(UnsafeFile):
        _read(root, "run-000002/secret", use_openat2)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_a_link_to_a_file_inside_the_root_is_refused_too(root: Path, use_openat2: bool) -> None:
    (root / "run-000001" / "alias.log").symlink_to(root / "run-000001" / "stdout.log")
    with pytest.raises(UnsafeFile):
        _read(root, "run-000001/alias.log", use_openat2)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_a_fifo_neither_blocks_nor_is_read(root: Path, use_openat2: bool) -> None:
    os.mkfifo(root / "run-000001" / "stdout.fifo")
    with pytest.raises(UnsafeFile, match="not a regular file"):
        _read(root, "run-000001/stdout.fifo", use_openat2)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_a_directory_is_not_a_file(root: Path, use_openat2: bool) -> None:
    (root / "run-000001" / "dir.log").mkdir()
    with pytest.raises(UnsafeFile):
        _read(root, "run-000001/dir.log", use_openat2)


@pytest.mark.parametrize("rel", ["../secret", "run-000001/../../secret", "/etc/passwd", "", "."])
def test_paths_that_leave_the_root_are_refused_before_any_open(root: Path, rel: str) -> None:
    with pytest.raises(UnsafeFile):
        open_beneath(root, PurePath(rel))


@pytest.mark.parametrize("use_openat2", WAYS)
def test_a_missing_file_is_not_found(root: Path, use_openat2: bool) -> None:
    with pytest.raises(FileNotFoundError):
        _read(root, "run-000001/nothing.log", use_openat2)


def test_a_huge_file_costs_only_the_bytes_asked_for(root: Path) -> None:
    big = root / "run-000001" / "big.log"
    with big.open("wb") as f:
        f.truncate(10 * 1024**3)  # 10 GiB, sparse
        f.seek(-6, os.SEEK_END)
        f.write(b"tail!\n")
    chunk = read_beneath(root, PurePath("run-000001/big.log"), -6, 4096)
    assert chunk.data == b"tail!\n"
    assert chunk.size == 10 * 1024**3
    head = read_beneath(root, PurePath("run-000001/big.log"), 0, 16)
    assert len(head.data) == 16


def test_a_file_swapped_for_a_link_after_opening_is_not_what_is_read(root: Path) -> None:
    log = root / "run-000001" / "stdout.log"
    fd = open_beneath(root, PurePath("run-000001/stdout.log"))
    try:
        log.unlink()
        log.symlink_to(root.parent / "secret")
        assert read_from(fd, 0, 1024).data == b"hello\n"
    finally:
        os.close(fd)


def test_the_walk_is_used_where_the_kernel_has_no_openat2(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(beneath, "_openat2_works", False)
    (root / "run-000001" / "stderr.log").symlink_to("/proc/self/environ")
    assert _read(root, "run-000001/stdout.log", True) == b"hello\n"
    with pytest.raises(UnsafeFile):
        _read(root, "run-000001/stderr.log", True)


def test_split_under_finds_the_root() -> None:
    roots = (Path("/scratch/lab/runs"), Path("/scratch/lab/relay"))
    assert beneath.split_under(roots, PurePath("/scratch/lab/relay/run-000001/x")) == (
        Path("/scratch/lab/relay"),
        PurePath("run-000001/x"),
    )
    assert beneath.split_under(roots, PurePath("/etc/passwd")) is None


def test_the_local_transport_reads_nothing_through_a_planted_link(root: Path) -> None:
    from hpcops.transport.local import LocalTransport

    files = LocalTransport(trusted_roots=[root])
    (root / "run-000002").symlink_to(root.parent)  # a whole run directory swapped for a link
    (root / "run-000001" / "stderr.log").symlink_to(root.parent / "secret")
    for path in (root / "run-000002" / "secret", root / "run-000001" / "stderr.log"):
        assert files.read_chunk(path, 0, 4096).data == b""
        assert files.read_small_files([path]) == {}
    assert files.read_chunk(root / "run-000001" / "stdout.log", 0, 4096).data == b"hello\n"
