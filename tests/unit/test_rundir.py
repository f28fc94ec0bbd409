"""The run directory's markers, read defensively: the job owns the directory."""

from __future__ import annotations

import os
from pathlib import Path

from hpcops.rundir import RunDir, last_lines, parse_exit_marker, parse_start_marker
from hpcops.transport.local import LocalTransport


def test_markers_round_trip(tmp_path: Path) -> None:
    rundir, files = RunDir(tmp_path), LocalTransport()
    assert files.read_small_files(rundir.markers) == {}
    rundir.started_marker.write_text("1700000000 node1 42\n")
    rundir.exit_marker.write_text("3 1700000010\n")
    texts = files.read_small_files(rundir.markers)
    started = parse_start_marker(texts[rundir.started_marker])
    ended = parse_exit_marker(texts[rundir.exit_marker])
    assert started is not None and started.slurm_job_id == "42"
    assert ended is not None and ended.exit_code == 3
    files.remove_files(rundir.markers)
    files.remove_files(rundir.markers)  # already gone: fine
    assert files.read_small_files(rundir.markers) == {}


def test_half_written_or_garbage_markers_are_not_markers() -> None:
    assert parse_start_marker("1700000000 node1") is None
    assert parse_exit_marker("three 1700000000") is None
    assert parse_exit_marker("") is None


def test_a_fifo_or_directory_at_a_marker_path_does_not_block(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    os.mkfifo(rundir.exit_marker)
    rundir.started_marker.mkdir()
    assert LocalTransport().read_small_files(rundir.markers) == {}


def test_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_text("x" * 100_000 + "\nlast line\n")
    chunk = LocalTransport().read_chunk(log, -16384, 16384)
    assert chunk.size == 100_011 and chunk.start == 100_011 - 16384
    assert last_lines(chunk.data, max_lines=1) == "last line"
    missing = LocalTransport().read_chunk(tmp_path / "missing.log", -16384, 16384)
    assert (missing.data, missing.size) == (b"", 0)
    assert last_lines(missing.data) == ""


def test_the_stagers_files_are_named_in_the_run_directory(tmp_path: Path) -> None:
    from hpcops.rundir import STAGING_MARKER, STAGING_PROGRESS

    rundir = RunDir(tmp_path)
    assert rundir.staged_marker == tmp_path / STAGING_MARKER == tmp_path / "hpcops.staged"
    assert rundir.staging_progress == tmp_path / STAGING_PROGRESS == tmp_path / "hpcops.staging"
    assert rundir.staged_marker not in rundir.markers, "a requeue keeps the staged data"
