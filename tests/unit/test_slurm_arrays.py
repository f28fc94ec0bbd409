"""Slurm job arrays: the --array value, task ids, and squeue/sacct array lines, on output captured
from the real dev cluster (Slurm 22.05.8; tests/fixtures/slurm/README.md, "Job arrays")."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from hpcops.errors import SlurmError
from hpcops.names import is_job_id
from hpcops.slurm import arrays, commands, parse
from hpcops.slurm.backend import CommandBackend
from hpcops.states import RunState
from hpcops.transport.base import CommandResult

FIXTURES = Path(__file__).parents[1] / "fixtures" / "slurm"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- the --array value -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "throttle", "expected"),
    [
        ([9, 3, 10, 4, 11, 12], 4, "3-4,9-12%4"),
        ([0, 1, 2, 3, 4], 2, "0-4%2"),
        ([1, 3, 5, 6, 7], 2, "1,3,5-7%2"),
        ([7], None, "7"),
        ([5, 5, 5, 6], None, "5-6"),
        (range(1000), 1, "0-999%1"),
        ((i for i in (2, 0)), None, "0,2"),
    ],
)
def test_array_option(indices: Any, throttle: int | None, expected: str) -> None:
    text = arrays.array_option(indices, throttle)
    assert text == expected
    assert arrays.is_array_option(text)


@pytest.mark.parametrize(
    ("indices", "throttle"),
    [
        ([], None),
        ([-1], None),
        ([1.0], None),
        ([True], None),
        (["3"], None),
        ([arrays.MAX_TASK_INDEX + 1], None),
        ([1], 0),
        ([1], -2),
        ([1], True),
    ],
)
def test_array_option_refuses(indices: list[Any], throttle: Any) -> None:
    with pytest.raises(ValueError):
        arrays.array_option(indices, throttle)


def test_sbatch_puts_the_array_on_the_command_line() -> None:
    argv = commands.sbatch_argv("/r/sweep.sbatch", array="3-4,9-12%4")
    assert argv == [
        "sbatch",
        "--parsable",
        "--export=NONE",
        "--array=3-4,9-12%4",
        "/r/sweep.sbatch",
    ]
    assert commands.sbatch_argv("/r/job.sbatch") == [
        "sbatch",
        "--parsable",
        "--export=NONE",
        "/r/job.sbatch",
    ]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1-3 --wrap=x",
        "1-3%",
        "%2",
        "1,,2",
        "1-",
        "-1",
        "1-9:2",
        "1;2",
        "[1-3]",
        "1-3%2%2",
        "１",
    ],
)
def test_sbatch_refuses_an_array_value_it_would_not_write(value: str) -> None:
    with pytest.raises(ValueError, match="--array"):
        commands.sbatch_argv("/r/sweep.sbatch", array=value)


# --- task ids ----------------------------------------------------------------------------------


def test_split_task_id() -> None:
    assert arrays.split_task_id("123_4") == ("123", 4)
    assert arrays.split_task_id("123") == ("123", None)
    assert arrays.split_task_id("4574_1000") == ("4574", 1000)
    for bad in ["123_", "_4", "123_[4-9]", "123_4.batch", "0", "abc", "123_4_5", ""]:
        with pytest.raises(ValueError):
            arrays.split_task_id(bad)


@pytest.mark.parametrize("text", ["123_4", "4574_1000", "1_0"])
def test_array_tasks_are_job_ids(text: str) -> None:
    assert is_job_id(text)
    assert commands.scancel_argv([text]) == ["scancel", text]


@pytest.mark.parametrize("text", ["123_[4-9%4]", "123_[1]", "123_", "123_4.batch", "123_-1"])
def test_array_expressions_are_not_job_ids(text: str) -> None:
    assert not is_job_id(text)
    with pytest.raises(ValueError):
        commands.scancel_argv([text])


# --- index expressions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4", [4]),
        ("[4-9%4]", [4, 5, 6, 7, 8, 9]),
        ("[1,3,5-7]", [1, 3, 5, 6, 7]),
        ("[2,4%2]", [2, 4]),  # squeue_array_scancel_task.txt
        ("[1000]", [1000]),  # squeue_array_held.txt
        ("[1,5,9]", [1, 5, 9]),  # `--array=1-9:4` as squeue prints it
        ("[0-10:5%3]", [0, 5, 10]),  # an evenly spaced set, as squeue prints it
        ("[3,1-2]", [1, 2, 3]),
    ],
)
def test_expand_tasks(text: str, expected: list[int]) -> None:
    assert arrays.expand_tasks(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "[4-9",  # squeue cut the field at 31 characters (squeue_array_cut.txt)
        "[0-1,3,6,10,15,21,28,36,45,55,66,78,91,105,120,136,153,171,19...%4]",  # sacct's cut
        "[9-4]",
        "[1-9:0]",
        "[a]",
        "[1,,2]",
        "[1%x]",
        "[-1]",
        "[12345678]",
        "4-9]",
        "[[1]]",
    ],
)
def test_expand_tasks_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        arrays.expand_tasks(text)


def test_expansion_is_bounded_before_any_list_is_built() -> None:
    with pytest.raises(ValueError, match="more than"):
        arrays.expand_tasks("[0-9999999]")
    with pytest.raises(ValueError, match="more than"):
        arrays.expand_tasks("[0-60000,70000-130000]")
    with pytest.raises(ValueError, match="more than 10"):
        arrays.expand_tasks("[0-10]", limit=10)
    assert len(arrays.expand_tasks("[0-99999]")) == arrays.MAX_TASKS_PER_LINE
    with pytest.raises(ValueError, match="too long"):
        arrays.expand_tasks("[" + "1," * 60_000 + "1]")


def test_split_array_id() -> None:
    assert arrays.split_array_id("123_[4-9%4]") == ("123", "[4-9%4]")
    assert arrays.split_array_id("123_4") == ("123", "4")
    assert arrays.split_array_id("123") is None
    assert arrays.split_array_id("123_[4-9]x") is None
    assert arrays.split_array_id("x123_4") is None


# --- squeue ------------------------------------------------------------------------------------


def test_squeue_asks_for_one_line_per_task() -> None:
    argv = commands.squeue_argv(account="lab", user="svc")
    assert "--array" in argv
    assert argv == [
        "squeue",
        "--noheader",
        "--array",
        argv[3],
        "--account=lab",
    ]
    assert argv[3].startswith("--format=%i")


def test_squeue_pending_array_lines_become_one_entry_per_task() -> None:
    entries = parse.parse_squeue(fixture("squeue_array_running.txt"))
    by_id = {e.job_id: e for e in entries}
    assert len(by_id) == len(entries) == 10
    assert sorted(by_id) == sorted(
        [*(f"4574_{i}" for i in range(5)), "4575_1", "4575_3", "4575_5", "4575_6", "4575_7"]
    )
    pending = by_id["4574_3"]
    assert pending.array_job_id == "4574" and pending.array_task == 3
    assert pending.state is RunState.PENDING and pending.reason == "JobArrayTaskLimit"
    assert pending.token == "arr0y5" and pending.name == "fx array"
    assert pending.started_at is None
    running = by_id["4574_0"]
    assert (running.array_job_id, running.array_task, running.state) == (
        "4574",
        0,
        RunState.RUNNING,
    )
    assert running.token == "arr0y5" and running.started_at is not None
    assert {e.token for e in entries if e.array_job_id == "4575"} == {"arr1157"}


def test_squeue_after_one_pending_task_was_cancelled() -> None:
    entries = parse.parse_squeue(fixture("squeue_array_scancel_task.txt"))
    tasks = sorted(e.array_task or 0 for e in entries if e.array_job_id == "4574")
    assert tasks == [0, 1, 2, 4], "4574_[2,4%2]: task 3 is gone"
    assert sorted(e.array_task or 0 for e in entries if e.array_job_id == "4575") == [3, 5, 6, 7]


def test_squeue_held_arrays_and_single_index_lines() -> None:
    entries = parse.parse_squeue(fixture("squeue_array_held.txt"))
    held = [e for e in entries if e.array_job_id == "4581"]
    assert [e.array_task for e in held] == [5, 6, 7, 8, 9]
    assert {e.reason for e in held} == {"JobHeldUser"}
    assert [e.job_id for e in entries if e.array_job_id == "4583"] == ["4583_1000"]
    assert len([e for e in entries if e.array_job_id == "4584"]) == 1001


def test_squeue_with_array_flag_and_without_agree() -> None:
    tasks = parse.parse_squeue(fixture("squeue_array_tasks.txt"))
    folded = parse.parse_squeue(fixture("squeue_array_compressed.txt"))
    assert sorted(tasks, key=lambda e: e.job_id) == sorted(folded, key=lambda e: e.job_id)
    assert sorted(e.array_task or 0 for e in tasks) == [3, 4, 9, 10, 11, 12]


def test_squeue_cut_array_line_is_left_out_not_misread(caplog: pytest.LogCaptureFixture) -> None:
    # Without --array squeue cut a long index list at 31 characters, without a mark.
    with caplog.at_level(logging.WARNING):
        entries = parse.parse_squeue(fixture("squeue_array_cut.txt"))
    assert not [e for e in entries if e.array_job_id == "4589"]
    assert "4589_[0-1,3,6" in caplog.text
    # The same array with --array: every task, exactly.
    flagged = parse.parse_squeue(fixture("squeue_array_flag.txt"))
    ragged = [e.array_task for e in flagged if e.array_job_id == "4589"]
    assert ragged == [i * (i + 1) // 2 for i in range(40)]
    stepped = [e.array_task for e in entries if e.array_job_id == "4587"]
    assert stepped == list(range(0, 99, 2)), "4587_[0-98:2%3]"


def test_squeue_plain_jobs_are_unchanged() -> None:
    for entry in parse.parse_squeue(fixture("squeue_mixed.txt")):
        assert entry.array_job_id is None and entry.array_task is None
        assert "_" not in entry.job_id


def _squeue_line(job_id: str) -> str:
    fields = [job_id, "PENDING", "None", "u", "lab", "cpu", "1", "N/A", "1"]
    fields += ["N/A", "N/A", "1:00", "hpcops:t0k", "n"]
    return commands.FIELD_SEP.join(fields) + "\n"


def test_squeue_junk_array_lines_are_skipped() -> None:
    text = "".join(
        _squeue_line(job_id)
        for job_id in ["7_[1-3]", "8_[x]", "9_[3-1]", "10_[1-", "_[1]", "11_", "12_[2]x", "13_5"]
    )
    entries = parse.parse_squeue(text)
    assert [e.job_id for e in entries] == ["7_1", "7_2", "7_3", "13_5"]


def test_squeue_expansion_has_one_budget_for_the_whole_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = "".join(_squeue_line(f"{n}_[0-99999]") for n in range(1, 6))
    with caplog.at_level(logging.WARNING):
        entries = parse.parse_squeue(text)
    assert len(entries) == parse.MAX_EXPANDED_TASKS
    assert "3 array line(s)" in caplog.text


# --- sacct -------------------------------------------------------------------------------------


def test_sacct_array_tasks_with_their_steps() -> None:
    records = parse.parse_sacct(fixture("sacct_array_finished.txt"))
    done = records["4574_2"]
    assert (done.array_job_id, done.array_task, done.state) == ("4574", 2, RunState.COMPLETED)
    assert done.max_rss_bytes == 4692 * 1024, "from 4574_2.batch"
    assert done.token == "arr0y5" and done.reason == "JobArrayTaskLimit"
    failed = records["4582_1"]
    assert failed.state is RunState.FAILED and failed.exit_code == 3
    assert records["4582_0"].state is RunState.COMPLETED
    assert records["4575_1"].slurm_state == "CANCELLED by 0"
    assert "4574_3" not in records, "a task cancelled while pending leaves no record"
    assert not any("." in key for key in records)


def test_sacct_rows_of_tasks_that_never_started_become_one_record_each() -> None:
    records = parse.parse_sacct(fixture("sacct_array_finished.txt"))
    held = [records[f"4581_{i}"] for i in range(5, 10)]
    assert {r.slurm_state for r in held} == {"CANCELLED by 0"}
    assert {r.token for r in held} == {"h01d59"}
    assert {r.started_at for r in held} == {None} and {r.max_rss_bytes for r in held} == {None}
    assert [r.array_task for r in held] == [5, 6, 7, 8, 9]
    # 4592: task 0 ran and was cancelled, 1-3 were cancelled while waiting on the throttle.
    assert records["4592_0"].max_rss_bytes is not None
    assert [records[f"4592_{i}"].started_at for i in (1, 2, 3)] == [None, None, None]


def test_sacct_live_array() -> None:
    records = parse.parse_sacct(fixture("sacct_array_live.txt"))
    assert records["4574_0"].state is RunState.RUNNING
    assert records["4574_0"].comment == "", "sacct shows the comment only once a task ended"
    assert [records[f"4574_{i}"].state for i in (2, 3, 4)] == [RunState.PENDING] * 3


def test_sacct_asked_for_a_task_id_only_knows_started_tasks() -> None:
    # `sacct --jobs=4574_0,4574_3` while 3 pended: only 4574_0 (and its step) came back.
    assert list(parse.parse_sacct(fixture("sacct_array_live_task.txt"))) == ["4574_0"]
    assert list(parse.parse_sacct(fixture("sacct_array_by_task.txt"))) == ["4574_4"]


def test_sacct_cut_row_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        records = parse.parse_sacct(fixture("sacct_array_cancelled_pending.txt"))
    assert not [r for r in records.values() if r.array_job_id == "4589"]
    assert "sacct: 1 array line(s)" in caplog.text and "4589_[0-1,3" in caplog.text
    assert [r.array_task for r in records.values() if r.array_job_id == "4588"] == [1, 5, 9]
    assert len([r for r in records.values() if r.array_job_id == "4587"]) == 50


def test_a_tasks_own_row_beats_a_row_of_pending_tasks() -> None:
    fields = len(commands.SACCT_FIELDS)

    def row(job_id: str, state: str) -> str:
        values = [job_id, "n", state, "0:0"] + [""] * (fields - 4)
        return "|".join(values) + "\n"

    for text in [
        row("5_[1-3]", "CANCELLED by 0") + row("5_2", "COMPLETED"),
        row("5_2", "COMPLETED") + row("5_[1-3]", "CANCELLED by 0"),
    ]:
        records = parse.parse_sacct(text)
        assert records["5_2"].state is RunState.COMPLETED
        assert records["5_1"].state is RunState.CANCELLED


def test_sacct_finished_leaves_a_cut_row_out(caplog: pytest.LogCaptureFixture) -> None:
    cut = fixture("sacct_array_cancelled_pending.txt").splitlines()[2].split("|")[0]
    assert cut.endswith("...%4]")
    text = f"{cut}|hpcops:ragg3d|CANCELLED by 0|fx array ragged\n4588_[1,5,9]||CANCELLED by 0|x\n"
    with caplog.at_level(logging.WARNING):
        jobs = parse.parse_sacct_finished(text)
    assert [j.job_id for j in jobs] == ["4588_1", "4588_5", "4588_9"]
    assert "4589_[0-1,3" in caplog.text


def test_sacct_finished_finds_array_tasks_by_token() -> None:
    jobs = parse.parse_sacct_finished(fixture("sacct_array_finished_by_comment.txt"))
    by_token: dict[str | None, list[parse.FinishedJob]] = {}
    for job in jobs:
        by_token.setdefault(job.token, []).append(job)
    assert [j.array_task for j in by_token["arr0y5"]] == [0, 1, 2, 4]
    assert [j.array_task for j in by_token["cance1a"]] == [0, 1, 2, 3]
    assert {j.state for j in by_token["cance1a"]} == {RunState.CANCELLED}
    assert [(j.job_id, j.state) for j in by_token["fa1l02"]] == [
        ("4582_0", RunState.COMPLETED),
        ("4582_1", RunState.FAILED),
        ("4582_2", RunState.COMPLETED),
    ]
    assert {j.array_job_id for j in by_token["h01d59"]} == {"4581"}
    assert len(by_token[None]) == 1 + 1001, "4583_[1000] and 4584_[0-1000]"


def test_sacct_usage_counts_array_tasks() -> None:
    fields = ("JobID", "User", "ElapsedRaw", "AllocTRES")
    assert fields == commands.SACCT_USAGE_FIELDS
    text = "4574_0|root|90|billing=1,cpu=1,mem=1000M,node=1\n4581_[5-9]|root|0|\n"
    assert [r.job_id for r in parse.parse_sacct_usage(text)] == ["4574_0"]


# --- MaxArraySize and the backend --------------------------------------------------------------


def test_max_array_size_from_scontrol() -> None:
    assert parse.parse_max_array_size(fixture("scontrol_show_config.txt")) == 1001
    assert parse.parse_max_array_size("MaxArraySize = x\n") is None
    assert parse.parse_max_array_size("") is None


class _Recorder:
    kind = "local"
    connections_opened = 0

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.sent: list[list[str]] = []

    def run(self, argv: list[str], *, timeout_s: float, stdin: str | None = None) -> Any:
        self.sent.append(argv)
        return CommandResult(tuple(argv), 0, self.answers.get(argv[0], ""), "", 0.0)


def test_the_backend_submits_an_array_and_reads_max_array_size() -> None:
    recorder = _Recorder(
        {
            "sbatch": fixture("sbatch_array_parsable.txt"),
            "scontrol": fixture("scontrol_show_config.txt"),
        }
    )
    backend = CommandBackend(recorder, account="lab", user="svc")  # type: ignore[arg-type]
    assert backend.submit(PurePosixPath("/r/s.sbatch"), array="0-4%2") == "4574"
    assert backend.max_array_size() == 1001
    assert recorder.sent == [
        ["sbatch", "--parsable", "--export=NONE", "--array=0-4%2", "/r/s.sbatch"],
        ["scontrol", "show", "config"],
    ]


def test_the_backend_refuses_a_config_without_max_array_size() -> None:
    backend = CommandBackend(_Recorder({}), account="lab", user="svc")  # type: ignore[arg-type]
    with pytest.raises(SlurmError, match="MaxArraySize"):
        backend.max_array_size()


def test_an_array_above_max_array_size_is_a_rejection() -> None:
    stderr = fixture("sbatch_array_too_big.stderr")
    assert "Invalid job array specification" in stderr
    assert not parse.is_unreachable(stderr) and not parse.is_limit(stderr)
