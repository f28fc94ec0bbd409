"""Slurm command builders and parsers, on output captured from the real dev cluster (Slurm 22.05.8;
tests/fixtures/slurm/README.md says which command produced each file)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hpcops.slurm import commands, parse
from hpcops.states import RunState

FIXTURES = Path(__file__).parents[1] / "fixtures" / "slurm"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- sbatch ----------------------------------------------------------------------------------


def test_sbatch_parsable() -> None:
    assert parse.parse_sbatch_parsable(fixture("sbatch_parsable.txt")) == "10"
    assert parse.parse_sbatch_parsable("123;cluster2\n") == "123"
    with pytest.raises(ValueError, match="not a job id"):
        parse.parse_sbatch_parsable("sbatch: warning: something\n")


@pytest.mark.parametrize("name", ["partition", "qos", "account", "gres", "mem", "gresname"])
def test_rejections_are_neither_unreachable_nor_limits(name: str) -> None:
    stderr = fixture(f"sbatch_rejected_{name}.stderr")
    assert stderr.strip()
    assert not parse.is_unreachable(stderr)
    assert not parse.is_limit(stderr)


@pytest.mark.parametrize(
    "name", ["sbatch_unreachable.stderr", "squeue_unreachable.stderr", "scancel_unreachable.stderr"]
)
def test_unreachable_controller_is_recognised(name: str) -> None:
    assert parse.is_unreachable(fixture(name))


def test_limits_mean_wait() -> None:
    # sbatch's words when an association or QOS limit is full (Slurm 22.05 slurm_errno.c)
    assert parse.is_limit(
        "sbatch: error: AssocMaxSubmitJobLimit\n"
        "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
        "(job submit limit, user's size and/or time limits)\n"
    )


# --- squeue ----------------------------------------------------------------------------------


def test_squeue_mixed() -> None:
    entries = {e.job_id: e for e in parse.parse_squeue(fixture("squeue_mixed.txt"))}
    assert entries["28"].state is RunState.PENDING
    assert entries["28"].reason == "Priority"
    assert entries["28"].cpus == 4
    assert entries["28"].token is None, "(null) is no comment"
    assert entries["27"].token == "abc123"
    assert entries["27"].name == "needs eight cpus"
    assert entries["31"].reason == "PartitionTimeLimit"
    assert entries["30"].reason == "JobHeldUser"
    assert entries["30"].started_at is None, "N/A"
    assert entries["28"].submitted_at == datetime(2026, 11, 23, 3, 20, 2).timestamp()
    running = [e for e in entries.values() if e.state is RunState.RUNNING]
    assert running, "the capture has running jobs"
    gpu_jobs = [e for e in entries.values() if e.gpus]
    assert gpu_jobs and all(e.gpus >= 1 for e in gpu_jobs)
    assert all(e.account == "lab" for e in entries.values())


def test_squeue_skips_garbage_lines() -> None:
    assert parse.parse_squeue("garbage\n\n") == []


# --- sacct -----------------------------------------------------------------------------------


def test_sacct_mixed() -> None:
    records = parse.parse_sacct(fixture("sacct_mixed.txt"))
    completed = records["10"]
    assert completed.state is RunState.COMPLETED
    assert (completed.exit_code, completed.signal) == (0, 0)
    assert completed.elapsed_s == 4
    assert completed.max_rss_bytes == 218304 * 1024, "MaxRSS comes from the .batch step"
    assert completed.total_cpu_s == pytest.approx(0.429)
    assert completed.token == "c0mp1e7ed"
    assert completed.name == "fx completed"

    assert (records["11"].state, records["11"].exit_code) == (RunState.FAILED, 3)
    assert records["12"].state is RunState.TIMEOUT and records["12"].elapsed_s == 61
    assert records["13"].state is RunState.CANCELLED
    assert records["13"].slurm_state == "CANCELLED by 0"
    pending_cancel = records["14"]
    assert pending_cancel.state is RunState.CANCELLED
    assert pending_cancel.started_at is None and pending_cancel.max_rss_bytes is None
    oom = records["15"]
    assert (oom.state, oom.exit_code, oom.signal) == (RunState.FAILED, 0, 9)
    assert records["25"].state is RunState.RUNNING and records["25"].ended_at is None
    assert records["25"].comment == "", "sacct shows no comment for live jobs"
    assert records["27"].state is RunState.PENDING


def test_sacct_placeholder_row_is_not_final() -> None:
    records = parse.parse_sacct(fixture("sacct_first_second.txt"))
    assert records
    assert not any(r.state.is_terminal for r in records.values())


def test_sacct_job_name_with_the_separator() -> None:
    line = (
        "7|a|b name|COMPLETED|0:0|None|2026-11-23T03:18:33|2026-11-23T03:18:34|"
        "2026-11-23T03:18:38|4|00:00.429||billing=1|hpcops:t0k|cpu|root\n"
    )
    record = parse.parse_sacct(line)["7"]
    assert record.name == "a|b name"
    assert record.state is RunState.COMPLETED and record.token == "t0k"


def test_sacct_finished_by_comment() -> None:
    jobs = parse.parse_sacct_finished(fixture("sacct_by_comment_finished.txt"))
    assert jobs and all("." not in j.job_id for j in jobs)
    assert all(j.state.is_terminal for j in jobs)
    by_token = {j.token: j for j in jobs if j.token}
    assert by_token, "the capture has hpcops comments"
    # The plain query lists step rows too; the parser keeps job rows only.
    plain = parse.parse_sacct_finished(fixture("sacct_by_comment.txt"))
    assert all("." not in j.job_id for j in plain)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:00.429", 0.429),
        ("00:00:00", 0.0),
        ("2:00:00", 7200.0),
        ("1-00:00:00", 86400.0),
        ("1-02:03", 93780.0),
        ("30", 1800.0),
        ("UNLIMITED", None),
        ("", None),
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    assert parse.parse_duration_s(text) == (pytest.approx(seconds) if seconds else seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("218304K", 218304 * 1024), ("1.5G", int(1.5 * 1024**3)), ("0", 0), ("", None)],
)
def test_sizes(text: str, expected: int | None) -> None:
    assert parse.parse_size_bytes(text) == expected


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("N/A", 0), ("gres:gpu:2", 2), ("gres/gpu=3", 3), ("gpu:a100:2", 2), ("(null)", 0)],
)
def test_gpus(gres: str, gpus: int) -> None:
    assert parse.parse_gpus(gres) == gpus


# --- sinfo -----------------------------------------------------------------------------------


def test_sinfo_partitions() -> None:
    partitions = parse.parse_sinfo_partitions(fixture("sinfo_partitions.txt"))
    assert partitions["cpu"].max_time_s == 7200
    assert partitions["gpu"].max_time_s == 86400
    assert partitions["cpu"].available
    assert (
        parse.parse_sinfo_partitions("x\x1finfinite\x1f1\x1f1\x1f1\x1f(null)\x1fup\n")[
            "x"
        ].max_time_s
        is None
    )


# --- command builders --------------------------------------------------------------------------


def test_squeue_is_filtered_by_the_lab_account() -> None:
    argv = commands.squeue_argv(account="lab", user="alice")
    assert argv[:2] == ["squeue", "--noheader"]
    assert "--account=lab" in argv and not any(a.startswith("--user") for a in argv)
    assert "--user=alice" in commands.squeue_argv(account=None, user="alice")
    assert not any(a.startswith("--jobs") or a.startswith("-j") for a in argv)


def test_sacct_asks_for_all_ended_jobs_at_once() -> None:
    argv = commands.sacct_argv(["3", "4", "5"])
    assert "--jobs=3,4,5" in argv and "--parsable2" in argv
    with pytest.raises(ValueError):
        commands.sacct_argv([])


def test_sacct_finished_has_both_ends_of_the_window() -> None:
    argv = commands.sacct_finished_argv(account="lab", user=None, since=datetime(2026, 1, 2, 3))
    assert "--starttime=2026-01-02T03:00:00" in argv and "--endtime=now" in argv
    assert any(a.startswith("--state=") for a in argv)
    assert "--allusers" in argv and "--accounts=lab" in argv


def test_the_first_second_placeholder_is_not_taken_for_the_final_record() -> None:
    from hpcops.settling import is_placeholder as _is_placeholder

    placeholder = parse.parse_sacct(fixture("sacct_first_second.txt"))
    assert placeholder and all(_is_placeholder(r) for r in placeholder.values())
    real = parse.parse_sacct(fixture("sacct_mixed.txt"))
    assert not any(_is_placeholder(r) for r in real.values())


def test_exit_code_prefers_the_marker_where_sacct_reduced_it() -> None:
    from dataclasses import replace

    from hpcops.settling import exit_code as _exit_code

    failed = parse.parse_sacct(fixture("sacct_mixed.txt"))["11"]  # FAILED 3:0
    assert _exit_code(failed, 3) == 3
    assert _exit_code(replace(failed, exit_code=15), 143) == 143, "sacct shows 143 as 15:0"
    assert _exit_code(replace(failed, exit_code=72), 200) == 200
    assert _exit_code(failed, None) == 3, "no marker: sacct's figure"
    assert _exit_code(failed, 7) == 3, "disagreeing marker: sacct wins"
    oom = parse.parse_sacct(fixture("sacct_mixed.txt"))["15"]  # FAILED 0:9
    assert _exit_code(oom, 137) == 0, "killed by a signal: sacct's exit and signal stand"


# --- job ids are checked wherever they are read ---------------------------------------------


@pytest.mark.parametrize(
    "text", ["--user=svc", "-1", "12;rm -rf /", "0", "", "12 13", "１２", "1e5"]
)
def test_what_is_not_a_job_id_never_reaches_a_command_line(text: str) -> None:
    from hpcops.names import is_job_id
    from hpcops.slurm.commands import sacct_argv, scancel_argv

    assert not is_job_id(text)
    with pytest.raises(ValueError, match="not a Slurm job id"):
        scancel_argv(["12", text])
    with pytest.raises(ValueError, match="not a Slurm job id"):
        sacct_argv([text])


@pytest.mark.parametrize("text", ["1", "42", "4294967294", "1234_7"])
def test_job_ids_and_array_tasks_are_job_ids(text: str) -> None:
    from hpcops.names import is_job_id

    assert is_job_id(text)


def test_the_backend_leaves_bad_ids_out_of_scancel() -> None:
    from hpcops.slurm.backend import CommandBackend
    from hpcops.transport.base import CommandResult

    sent: list[list[str]] = []

    class Recorder:
        kind = "local"
        connections_opened = 0

        def run(self, argv: list[str], *, timeout_s: float, stdin: str | None = None) -> Any:
            sent.append(argv)
            return CommandResult(tuple(argv), 0, "", "", 0.0)

    backend = CommandBackend(Recorder(), account="lab", user="svc")  # type: ignore[arg-type]
    backend.cancel(["--user=svc", "17"])
    backend.cancel(["--user=svc"])
    assert sent == [["scancel", "17"]]


def test_sbatch_output_that_is_not_a_job_id_is_refused() -> None:
    with pytest.raises(ValueError):
        parse.parse_sbatch_parsable("１２\n")


def test_sbatch_never_exports_the_daemons_environment() -> None:
    # The command line beats an SBATCH_EXPORT=ALL in the daemon's environment (Slurm 22.05).
    assert commands.sbatch_argv("/r/job.sbatch") == [
        "sbatch",
        "--parsable",
        "--export=NONE",
        "/r/job.sbatch",
    ]
