"""The run directory's markers, read defensively: the job owns the directory."""

from __future__ import annotations

import os
from pathlib import Path

from hpcops.rundir import RunDir, parse_exit_marker, parse_start_marker, tail_text


def test_markers_round_trip(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    assert rundir.read_started() is None and rundir.read_exit() is None
    rundir.started_marker.write_text("1700000000 node1 42\n")
    rundir.exit_marker.write_text("3 1700000010\n")
    started, ended = rundir.read_started(), rundir.read_exit()
    assert started is not None and started.slurm_job_id == "42"
    assert ended is not None and ended.exit_code == 3
    rundir.clear_markers()
    assert rundir.read_exit() is None


def test_half_written_or_garbage_markers_are_not_markers() -> None:
    assert parse_start_marker("1700000000 node1") is None
    assert parse_exit_marker("three 1700000000") is None
    assert parse_exit_marker("") is None


def test_a_fifo_or_directory_at_a_marker_path_does_not_block(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    os.mkfifo(rundir.exit_marker)
    rundir.started_marker.mkdir()
    assert rundir.read_exit() is None
    assert rundir.read_started() is None


def test_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_text("x" * 100_000 + "\nlast line\n")
    assert tail_text(log, max_lines=1) == "last line"
    assert tail_text(tmp_path / "missing.log") == ""
