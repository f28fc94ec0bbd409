"""The run directory's markers, read defensively: the job owns the directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcops.rundir import (
    PROGRESS_MAX_BYTES,
    BadMarker,
    ExitMarker,
    RunDir,
    StartMarker,
    last_lines,
    parse_exit_marker,
    parse_progress,
    parse_start_marker,
)
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


def test_half_written_markers_are_not_markers_yet() -> None:
    assert parse_start_marker("1700000000 node1") is None
    assert parse_exit_marker("3") is None
    assert parse_exit_marker("") is None


@pytest.mark.parametrize(
    "text",
    [
        "99999999999999999999 1700000000",  # once raised on every tick, for the whole lab
        "256 1700000000",
        "-1 1700000000",
        "three 1700000000",
        "３ 1700000000",  # a digit, but not an ASCII one
        "0 1e300",
        "0 nan",
        "0 -5",
        "0 " + "9" * 400,
    ],
)
def test_a_whole_but_impossible_exit_marker_is_refused_with_its_reason(text: str) -> None:
    with pytest.raises(BadMarker):
        parse_exit_marker(text)


@pytest.mark.parametrize(
    "text",
    [
        "1e300 node 777",  # once broke `hpcops ls` and `show` for everyone
        "inf node 777",
        "1700000000 node --user=svc",  # a job id that would become an option of scancel
        "1700000000 node 0",
        "1700000000 $(reboot) 42",
    ],
)
def test_a_whole_but_impossible_start_marker_is_refused_with_its_reason(text: str) -> None:
    with pytest.raises(BadMarker):
        parse_start_marker(text)


def test_plausible_markers_parse() -> None:
    assert parse_exit_marker("137 1700000010\n") == ExitMarker(137, 1700000010.0)
    started = parse_start_marker("1700000000.5 node-1.cluster 1234_5")
    assert started == StartMarker(1700000000.5, "node-1.cluster", "1234_5")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000,  # once stopped finalization of every later run
        '{"a": ' * 100 + "1" + "}" * 100,
        "x" * (PROGRESS_MAX_BYTES + 1),
        "not json",
        "[1, 2]",
        None,
    ],
)
def test_progress_files_are_bounded_json_objects(text: str | None) -> None:
    assert parse_progress(text) is None


def test_a_progress_file_with_brackets_in_strings_is_read() -> None:
    error = "[" * 40 + ' {{{{ \\" ]]'
    text = '{"token": "t", "error": "' + error + '"}'
    assert parse_progress(text) == {"token": "t", "error": error.replace('\\"', '"')}


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
