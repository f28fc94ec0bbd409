"""Retries on the command line: `hpcops retry`, the attempts in `show`, a later attempt marked in
`ls`, and `history` keeping a long why whole, all within 80 columns. The daemon is faked: these
tests check what the CLI sends and how it prints the API's answers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from cli_fakes import FakeDaemon, fake_daemon, run_cli
from click.testing import Result

from hpcops.cli import output
from hpcops.errors import HpcopsError, InvalidInput, PermissionDenied


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    monkeypatch.setattr(output, "terminal_width", lambda: 80)
    return fake_daemon(monkeypatch)


def _fits(result: Result) -> list[str]:
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    return lines


# --- retry -----------------------------------------------------------------------------------


def test_retry_sends_each_run_and_sweep_and_prints_what_was_queued(daemon: FakeDaemon) -> None:
    daemon.answers["retry"] = lambda p: {"id": p["run"], "message": f"{p['run']} queued again"}
    result = run_cli("retry", "12", "s7")
    assert result.exit_code == 0, result.output
    assert daemon.calls == [("retry", {"run": 12}), ("retry", {"run": "s7"})]
    assert result.output == "12 queued again\ns7 queued again\n"
    answer = {
        "id": 12,
        "name": "long",
        "state": "QUEUED",
        "attempt_number": 3,
        "max_attempts": 4,
        "previous_state": "TIMEOUT",
        "message": "run 12: attempt 3 of 4 queued (...)",
    }
    daemon.answers["retry"] = answer
    assert json.loads(run_cli("retry", "12", "--json").output) == answer


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("run 12 is RUNNING; only an ended run can be retried"), 2),
        (InvalidInput("run 12 completed; `hpcops rerun 12` runs it again as a new run"), 2),
        (PermissionDenied("bob may retry only their own runs; this run belongs to ana."), 5),
    ],
)
def test_a_refused_retry_says_why_with_its_exit_code(
    daemon: FakeDaemon, error: HpcopsError, code: int
) -> None:
    daemon.answers["retry"] = error
    result = run_cli("retry", "12")
    assert result.exit_code == code
    assert result.output == f"hpcops: {error.message}\n"


def test_retry_takes_only_run_and_sweep_ids(daemon: FakeDaemon) -> None:
    assert run_cli("retry", "x1").exit_code == 2
    assert run_cli("retry").exit_code == 2
    assert daemon.calls == []


# --- show ------------------------------------------------------------------------------------


def _attempt(number: int, job: str | None, state: str, why: str | None, **more: Any) -> Any:
    return {
        "number": number,
        "slurm_job_id": job,
        "state": state,
        "slurm_state": None,
        "submitted_at": None,
        "started_at": "2026-01-02T03:00:00Z" if job else None,
        "ended_at": "2026-01-02T03:02:00Z" if job else None,
        "elapsed_s": 120 if job else None,
        "restarts": 0,
        "exit_code": None,
        "signal": None,
        "reason": why,
        "total_cpu_s": None,
        "alloc_cpus": None,
        "alloc_gpus": None,
        "max_rss_bytes": None,
        "current": False,
        **more,
    }


RUN: dict[str, Any] = {
    "type": "run",
    "id": 12,
    "name": "long-training",
    "experiment": "resnet",
    "owner": "alexandra",
    "priority": 0,
    "state": "RUNNING",
    "slurm_job_id": "12345679",
    "partition": "gpu",
    "cpus": 4,
    "gpus": 1,
    "exit_code": None,
    "signal": None,
    "reason": None,
    "created_at": "2026-01-02T02:59:00Z",
    "submitted_at": "2026-01-02T03:05:00Z",
    "started_at": "2026-01-02T03:05:10Z",
    "ended_at": None,
    "elapsed_s": None,
    "total_cpu_s": None,
    "max_rss_bytes": None,
    "attempt": 3,
    "attempt_number": 3,
    "max_attempts": 4,
    "code": None,
    "data": [],
    "run_dir": "/scratch/hpcops/runs/12",
    "stderr_tail": None,
    "wait_reason": None,
    "attempts": [
        _attempt(
            1,
            "12345677",
            "TIMEOUT",
            "reached its time limit; attempt 2 of 4 queued (retry.on lists TIMEOUT)",
            restarts=1,
        ),
        _attempt(2, "12345678", "OUT_OF_MEMORY", "out of memory"),
        _attempt(3, "12345679", "RUNNING", None, ended_at=None, elapsed_s=None, current=True),
    ],
}


def test_show_lists_the_attempts_in_80_columns_and_json_has_them(daemon: FakeDaemon) -> None:
    daemon.answers["show"] = RUN
    result = run_cli("show", "12")
    assert result.exit_code == 0, result.output
    lines = _fits(result)
    start = lines.index("attempts:   3 of 4")
    table = lines[start + 1 :]
    # 8-digit job ids, OUT_OF_MEMORY and another day's times leave WHY no room: under its row
    assert table[0].split() == ["#", "JOB", "STATE", "START", "END", "ELAPSED", "RESTARTS"]
    assert (
        table[1].split()
        == ["1", "12345677", "TIMEOUT", "01-02", "03:00", "01-02", "03:02"][:3]
        + table[1].split()[3:]
    )
    assert table[1].split()[-2:] == ["2m00s", "1"]
    assert table[2] == "    reached its time limit; attempt 2 of 4 queued (retry.on lists TIMEOUT)"
    assert table[3].split()[:3] == ["2", "12345678", "OUT_OF_MEMORY"]
    assert table[4] == "    out of memory"
    assert table[5].startswith("3*  12345679  RUNNING") and len(table) == 6
    assert "…" not in result.output
    assert json.loads(run_cli("show", "12", "--json").output)["attempts"] == RUN["attempts"]


def test_the_why_of_an_attempt_is_a_column_when_there_is_room(daemon: FakeDaemon) -> None:
    today = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    times = {"started_at": today, "ended_at": today}
    why = "reached its time limit, and a little more text"
    short = [
        _attempt(1, "501", "TIMEOUT", why, restarts=2, **times),
        _attempt(2, "502", "RUNNING", None, current=True, started_at=today),
    ]
    daemon.answers["show"] = {**RUN, "attempts": short, "attempt_number": 2}
    lines = _fits(run_cli("show", "12"))
    header = next(line for line in lines if line.startswith("#"))
    assert header.split()[-1] == "WHY"
    column = header.index("WHY")
    row = lines.index(next(line for line in lines if line.startswith("1 ")))
    assert lines[row].split()[:3] == ["1", "501", "TIMEOUT"]
    end = lines.index(next(line for line in lines if line.startswith("2*")))
    assert [line[:column].strip() for line in lines[row + 1 : end]] == [""] * (end - row - 1)
    assert " ".join(line[column:].strip() for line in lines[row:end]) == why


def test_a_run_that_can_have_one_attempt_shows_no_attempts_table(daemon: FakeDaemon) -> None:
    only = _attempt(1, "55", "FAILED", "exit 1")
    daemon.answers["show"] = {**RUN, "attempts": [only], "attempt_number": 1, "max_attempts": 1}
    result = run_cli("show", "12")
    assert "attempts:" not in result.output and "RESTARTS" not in result.output
    daemon.answers["show"] = {**RUN, "attempts": [only], "attempt_number": 1, "max_attempts": 3}
    lines = run_cli("show", "12").output.splitlines()
    assert "attempts:   1 of 3" in lines


def test_a_run_retried_past_its_attempts_says_so(daemon: FakeDaemon) -> None:
    daemon.answers["show"] = {**RUN, "attempt_number": 5, "max_attempts": 4}
    result = run_cli("show", "12")
    assert "attempts:   5 of 4 (retried by hand past the spec's max_attempts)" in result.output


# --- ls --------------------------------------------------------------------------------------


def _row(**fields: Any) -> dict[str, Any]:
    return {
        "type": "run",
        "id": 12,
        "name": "long-training-of-a-resnet",
        "owner": "alexandra",
        "priority": 0,
        "state": "RUNNING",
        "slurm_job_id": "12345679",
        "created_at": "2026-01-02T03:04:05Z",
        "elapsed_s": 3700,
        "exit_code": None,
        "signal": None,
        "attempt_number": 1,
        "max_attempts": 1,
        "wait_reason": None,
        **fields,
    }


def test_ls_marks_a_run_on_a_later_attempt_within_80_columns(daemon: FakeDaemon) -> None:
    daemon.answers["list"] = [
        _row(attempt_number=2, max_attempts=4),
        _row(id=13, state="FAILED", attempt_number=5, max_attempts=4, exit_code=1),
        _row(id=14, state="QUEUED", wait_reason="lab GPU quota full: 4/4 in use by bob (4)"),
        _row(id=15, state="TIMEOUT", attempt_number=1, max_attempts=4, exit_code=0),
    ]
    result = run_cli("ls", "--all")
    assert result.exit_code == 0, result.output
    lines = _fits(result)
    states = {line.split()[0]: line.split("  ")[1].strip() for line in lines[1:4] + lines[5:]}
    assert states == {"12": "RUNNING (2/4)", "13": "FAILED (5)", "14": "QUEUED", "15": "TIMEOUT"}
    # no room for WHY beside the rest: it goes under its run, whole
    assert lines[4] == "    lab GPU quota full: 4/4 in use by bob (4)"
    assert lines[3].split()[-1] == "long-…"


# --- history ---------------------------------------------------------------------------------


def test_history_wraps_a_long_why_instead_of_cutting_it(daemon: FakeDaemon) -> None:
    note = (
        "attempt 1 ended TIMEOUT (job 12345677, cut at its time limit after 2m00s); "
        "attempt 2 of 4 queued, not before 03:03:00"
    )
    daemon.answers["history"] = [
        {"at": "2026-01-02T03:00:00.000Z", "actor": "ana", "from": None, "to": "QUEUED",
         "reason": "submitted"},
        {"at": "2026-01-02T03:02:00.000Z", "actor": "daemon", "from": "RUNNING", "to": "QUEUED",
         "reason": note},
        {"at": "2026-01-02T03:02:30.000Z", "actor": "daemon", "from": "RUNNING",
         "to": "RUNNING", "reason": "requeued by Slurm (restart 1 of job 12345678)"},
    ]  # fmt: skip
    result = run_cli("history", "12")
    assert result.exit_code == 0, result.output
    lines = _fits(result)
    column = lines[0].index("WHY")
    assert "…" not in result.output
    whys: list[list[str]] = []
    for line in lines[1:]:
        if line[:column].strip():  # an event's first line; the others continue its why
            whys.append([])
        whys[-1].append(line[column:].strip())
    assert [" ".join(parts) for parts in whys] == [
        "submitted",
        note,
        "requeued by Slurm (restart 1 of job 12345678)",
    ]


def test_show_of_a_sweep_marks_a_point_on_a_later_attempt(daemon: FakeDaemon) -> None:
    point = {"index": 0, "run_id": 12, "objective": None, "params": {"lr": 0.1}}
    daemon.answers["show"] = {
        "type": "sweep",
        "id": "s7",
        "name": "lr",
        "experiment": "e",
        "owner": "ana",
        "state": "RUNNING",
        "kind": "list",
        "n_points": 2,
        "progress": {"running": 1, "done": 1},
        "objective": None,
        "best": None,
        "created_at": "2026-01-02T03:04:05Z",
        "points": [
            {**point, "state": "RUNNING", "attempt_number": 3, "max_attempts": 4},
            {**point, "index": 1, "run_id": 13, "state": "COMPLETED"},
        ],
    }
    lines = _fits(run_cli("show", "s7"))
    rows = lines[lines.index(next(x for x in lines if x.startswith("POINT"))) + 1 :]
    assert [re.split(r"\s{2,}", row)[2] for row in rows] == ["RUNNING (3/4)", "COMPLETED"]
