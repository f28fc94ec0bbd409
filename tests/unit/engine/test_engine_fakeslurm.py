"""The fake Slurm speaks like the real one: its answers have the shape of the captured 22.05 output
(tests/fixtures/slurm) and go through the real parsers, so the engine's tests mean something."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import PurePosixPath

import pytest

from hpcops.errors import SlurmRejected, SlurmUnreachable
from hpcops.slurm import commands, parse
from hpcops.slurm.backend import CommandBackend, SlurmLimited
from hpcops.states import RunState
from hpcops.transport.base import TransportError

from .fakeslurm import FakeClock, FakeSlurm, fixture

SCRIPT = """#!/bin/bash
#SBATCH --job-name=fx completed
#SBATCH --comment=hpcops:c0mp1e7ed
#SBATCH --output=/runs/run-000001/stdout.log
#SBATCH --account=lab
#SBATCH --partition=gpu
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=3
#SBATCH --gres=gpu:2
#SBATCH --time=90

# --- prologue ---
echo hi
"""


@pytest.fixture
def cluster() -> tuple[FakeSlurm, CommandBackend]:
    slurm = FakeSlurm(FakeClock())
    slurm.write_file(PurePosixPath("/runs/run-000001/job.sbatch"), SCRIPT)
    return slurm, CommandBackend(slurm, account="lab", user=slurm.user)


def _shape(line: str, sep: str) -> list[str]:
    """Which fields are empty, a time, or something else: the shape a parser relies on."""

    def kind(value: str) -> str:
        if not value:
            return "empty"
        try:
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            return "text"
        return "time"

    return [kind(v) for v in line.rstrip("\n").split(sep)]


def test_sbatch_reads_the_directives_the_daemon_wrote(
    cluster: tuple[FakeSlurm, CommandBackend],
) -> None:
    slurm, backend = cluster
    job_id = backend.submit(PurePosixPath("/runs/run-000001/job.sbatch"))
    assert job_id == "100"
    job = slurm.job(job_id)
    assert (job.name, job.comment, job.partition) == ("fx completed", "hpcops:c0mp1e7ed", "gpu")
    assert (job.cpus, job.gpus, job.time_limit_min) == (6, 2, 90)
    assert str(job.run_dir.path) == "/runs/run-000001"


def test_squeue_rows_have_the_captured_shape_and_parse(
    cluster: tuple[FakeSlurm, CommandBackend],
) -> None:
    slurm, backend = cluster
    job_id = backend.submit(PurePosixPath("/runs/run-000001/job.sbatch"))
    rows = slurm.run(
        commands.squeue_argv(account="lab", user=None), timeout_s=5
    ).stdout.splitlines()
    captured = fixture("squeue_mixed.txt").splitlines()
    pending = next(line for line in captured if line.startswith("30\x1f"))  # %S is N/A
    assert _shape(rows[0], commands.FIELD_SEP) == _shape(pending, commands.FIELD_SEP)
    [entry] = backend.queue()
    assert (entry.job_id, entry.state, entry.token) == (job_id, RunState.PENDING, "c0mp1e7ed")
    assert (entry.cpus, entry.gpus, entry.partition) == (6, 2, "gpu")
    assert entry.started_at is None

    slurm.start(job_id)
    row = slurm.run(commands.squeue_argv(account="lab", user=None), timeout_s=5).stdout
    running = next(line for line in captured if line.startswith("26\x1f"))
    assert _shape(row, commands.FIELD_SEP) == _shape(running, commands.FIELD_SEP)
    [entry] = backend.queue()
    assert entry.state is RunState.RUNNING and entry.started_at is not None
    assert backend.queue() == [entry]
    assert slurm.calls["squeue"] == 5


def test_sacct_rows_have_the_captured_shape_and_parse(
    cluster: tuple[FakeSlurm, CommandBackend],
) -> None:
    slurm, backend = cluster
    job_id = backend.submit(PurePosixPath("/runs/run-000001/job.sbatch"))
    captured = fixture("sacct_mixed.txt").splitlines()
    argv = commands.sacct_argv([job_id])

    [row] = slurm.run(argv, timeout_s=5).stdout.splitlines()  # pending: no step yet
    assert _shape(row, "|") == _shape(captured[-1], "|")  # job 27, PENDING
    assert backend.accounting([job_id])[job_id].token is None, "no comment until it ends"

    slurm.start(job_id)
    slurm.clock.advance(4)
    slurm.finish(job_id, 0)
    job_row, batch_row = slurm.run(argv, timeout_s=5).stdout.splitlines()
    assert _shape(job_row, "|") == _shape(captured[0], "|")  # job 10, COMPLETED
    assert _shape(batch_row, "|") == _shape(captured[1], "|")
    record = backend.accounting([job_id])[job_id]
    assert (record.state, record.exit_code, record.signal) == (RunState.COMPLETED, 0, 0)
    assert record.token == "c0mp1e7ed"
    assert record.elapsed_s == 4
    assert record.max_rss_bytes == 218304 * 1024


def test_sacct_placeholder_row_is_the_captured_one(
    cluster: tuple[FakeSlurm, CommandBackend],
) -> None:
    slurm, backend = cluster
    job_id = backend.submit(PurePosixPath("/runs/run-000001/job.sbatch"))
    slurm.start(job_id)
    slurm.job(job_id).sacct = "placeholder"
    rows = slurm.run(commands.sacct_argv([job_id]), timeout_s=5).stdout.splitlines()
    captured = fixture("sacct_first_second.txt").splitlines()
    assert [_shape(r, "|") for r in rows] == [_shape(c, "|") for c in captured]
    assert [r.split("|", 3)[1:3] for r in rows] == [c.split("|", 3)[1:3] for c in captured]
    record = backend.accounting([job_id])[job_id]
    assert record.name == "allocation" and record.token is None


def test_exit_codes_are_reduced_as_sacct_reduces_them(
    cluster: tuple[FakeSlurm, CommandBackend],
) -> None:
    slurm, backend = cluster
    job_id = backend.submit(PurePosixPath("/runs/run-000001/job.sbatch"))
    slurm.finish(job_id, 143)
    record = backend.accounting([job_id])[job_id]
    assert (record.state, record.exit_code) == (RunState.FAILED, 15)
    assert slurm.file(slurm.job(job_id).run_dir.exit_marker) == f"143 {int(slurm.clock())}\n"


def test_finished_jobs_are_found_by_comment(cluster: tuple[FakeSlurm, CommandBackend]) -> None:
    slurm, backend = cluster
    job_id = backend.submit(PurePosixPath("/runs/run-000001/job.sbatch"))
    slurm.cancel(job_id)  # cancelled while pending: found all the same
    since = datetime.fromtimestamp(slurm.clock() - 300)
    out = slurm.run(
        commands.sacct_finished_argv(account="lab", user=None, since=since), timeout_s=5
    ).stdout
    captured = fixture("sacct_by_comment_finished.txt").splitlines()
    assert _shape(out, "|") == _shape(captured[13], "|")  # job 14, cancelled pending
    [found] = backend.finished_jobs(since)
    assert (found.job_id, found.token, found.slurm_state) == (
        job_id,
        "c0mp1e7ed",
        "CANCELLED by 1000",
    )


def test_refusals_and_outages_come_out_as_the_backend_expects(
    cluster: tuple[FakeSlurm, CommandBackend],
) -> None:
    slurm, backend = cluster
    script = PurePosixPath("/runs/run-000001/job.sbatch")
    slurm.refuse_sbatch("limit")
    with pytest.raises(SlurmLimited):
        backend.submit(script)
    slurm.refuse_sbatch("partition")
    with pytest.raises(SlurmRejected) as rejected:
        backend.submit(script)
    assert not isinstance(rejected.value, SlurmLimited | SlurmUnreachable)
    assert rejected.value.stderr == fixture("sbatch_rejected_partition.stderr")
    slurm.ctld_down = True
    for call in (lambda: backend.submit(script), backend.queue, lambda: backend.cancel(["7"])):
        with pytest.raises(SlurmUnreachable):
            call()
    assert backend.accounting(["100"]) == {}, "sacct asks slurmdbd: it still answers"
    slurm.ctld_down = False
    slurm.transport_down = True
    with pytest.raises(SlurmUnreachable):
        backend.queue()
    with pytest.raises(TransportError):
        slurm.read_small_files([script])
    assert not slurm.jobs, "nothing got in"


def test_sinfo_is_the_captured_one(cluster: tuple[FakeSlurm, CommandBackend]) -> None:
    _, backend = cluster
    partitions = backend.partitions()
    assert partitions == parse.parse_sinfo_partitions(fixture("sinfo_partitions.txt"))
    assert partitions["cpu"].max_time_s == 7200


# --- job arrays: the fake against the captured 22.05 output (tests/fixtures/slurm/README.md) ---

ARRAY_SCRIPT = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --comment=hpcops:{token}
#SBATCH --account=lab
#SBATCH --partition=cpu
#SBATCH --ntasks=1
#SBATCH --time=120

exec "/runs/sweep/task-$SLURM_ARRAY_TASK_ID.sh"
"""


def _array_cluster(name: str, token: str) -> tuple[FakeSlurm, CommandBackend, PurePosixPath]:
    slurm = FakeSlurm(FakeClock(), user="root", cancel_uid=0)  # captured as root
    script = PurePosixPath(f"/runs/sweep-{token}/array.sbatch")
    slurm.write_file(script, ARRAY_SCRIPT.format(name=name, token=token))
    slurm.task_run_dir = lambda script, task: script.parent / f"point-{task}"
    return slurm, CommandBackend(slurm, account="lab", user="root"), script


def _normal(line: str, array_id: str, real_id: str, sep: str) -> list[str]:
    """A row with the array id made the captured one's and times, durations and sizes blanked:
    what must then be equal is everything else."""
    fields = line.rstrip("\n").split(sep)
    fields[0] = fields[0].replace(array_id, real_id, 1)
    out = []
    for value in fields:
        if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", value):
            value = "<time>"
        elif re.fullmatch(r"\d+(\.\d+)?[KMG]?|\d\d:\d\d[.:]\d+", value) and value != "0:0":
            value = "<n>"
        out.append(value)
    return out


def _rows(text: str, real_id: str, sep: str) -> list[list[str]]:
    return [
        _normal(line, real_id, real_id, sep)
        for line in text.splitlines()
        if line.startswith(real_id + "_")
    ]


def _squeue(slurm: FakeSlurm, *, one_per_task: bool) -> str:
    argv = commands.squeue_argv(account="lab", user=None)
    if not one_per_task:
        argv.remove("--array")
    return slurm.run(argv, timeout_s=5).stdout


def test_sbatch_array_is_one_id_one_rpc_and_tasks_share_the_comment() -> None:
    slurm, backend, script = _array_cluster("fx array", "arr0y5")
    array_id = backend.submit(script, array="0-4%2")
    assert array_id == "100"
    assert slurm.calls["sbatch"] == 1 and slurm.ctld_rpcs == 1
    assert slurm.commands[-1] == (
        "sbatch",
        "--parsable",
        "--export=NONE",
        "--array=0-4%2",
        str(script),
    )
    tasks = slurm.tasks(array_id)
    assert [t.job_id for t in tasks] == [f"100_{i}" for i in range(5)]
    assert {(t.name, t.comment, t.array_throttle) for t in tasks} == {
        ("fx array", "hpcops:arr0y5", 2)
    }
    assert str(tasks[3].run_dir.path) == f"{script.parent}/point-3"
    assert backend.submit(script) == "101", "a plain job next: the array took one id"

    big = FakeSlurm(FakeClock())
    big.write_file(script, ARRAY_SCRIPT.format(name="big", token="b"))
    big_backend = CommandBackend(big, account="lab", user=big.user)
    assert big_backend.submit(script, array="0-199%4") == "100"
    assert big.ctld_rpcs == 1 and len(big.tasks("100")) == 200


def test_squeue_folds_pending_tasks_as_the_real_one_does() -> None:
    # squeue_array_running.txt, array 4574: `--array=0-4%2`, tasks 0 and 1 running.
    slurm, backend, script = _array_cluster("fx array", "arr0y5")
    array_id = backend.submit(script, array="0-4%2")
    assert [t.array_task for t in slurm.start_tasks(array_id)] == [0, 1]
    real = sorted(_rows(fixture("squeue_array_running.txt"), "4574", commands.FIELD_SEP))
    fake = [
        _normal(line, array_id, "4574", commands.FIELD_SEP)
        for line in _squeue(slurm, one_per_task=False).splitlines()
    ]
    assert sorted(fake) == real
    assert any(row[0] == "4574_[2-4%2]" for row in fake)
    entries = backend.queue()  # --array: one line per task
    assert sorted(e.job_id for e in entries) == [f"{array_id}_{i}" for i in range(5)]
    assert {e.token for e in entries} == {"arr0y5"}
    assert {e.reason for e in entries if e.state is RunState.PENDING} == {"JobArrayTaskLimit"}

    # scancel of one pending task: `4574_[2,4%2]` (squeue_array_scancel_task.txt).
    backend.cancel([f"{array_id}_3"])
    real = sorted(_rows(fixture("squeue_array_scancel_task.txt"), "4574", commands.FIELD_SEP))
    fake = [
        _normal(line, array_id, "4574", commands.FIELD_SEP)
        for line in _squeue(slurm, one_per_task=False).splitlines()
    ]
    assert sorted(fake) == real


def test_squeue_with_and_without_array_flag_match_the_captures() -> None:
    # squeue_array_tasks.txt / squeue_array_compressed.txt, array 4594: `3-4,9-12%2`.
    slurm, backend, script = _array_cluster("fx array flag", "f1a9")
    array_id = backend.submit(script, array="3-4,9-12%2")
    slurm.start_tasks(array_id)
    for flag, name in [(True, "squeue_array_tasks.txt"), (False, "squeue_array_compressed.txt")]:
        real = _rows(fixture(name), "4594", commands.FIELD_SEP)
        fake = [
            _normal(line, array_id, "4594", commands.FIELD_SEP)
            for line in _squeue(slurm, one_per_task=flag).splitlines()
        ]
        assert sorted(fake) == sorted(real), name
    with pytest.raises(AssertionError, match="throttle"):
        slurm.start(f"{array_id}_9")


def test_sacct_of_an_array_matches_the_captures() -> None:
    slurm, backend, script = _array_cluster("fx array", "arr0y5")
    array_id = backend.submit(script, array="0-4%2")
    slurm.start_tasks(array_id)
    argv = commands.sacct_argv([array_id])
    # Live, asked by the array's id (sacct_array_live.txt): running tasks with their steps and
    # one PENDING row for the rest, no comments yet.
    real = _rows(fixture("sacct_array_live.txt"), "4574", "|")
    fake = [
        _normal(r, array_id, "4574", "|") for r in slurm.run(argv, timeout_s=5).stdout.splitlines()
    ]
    assert fake == real
    # Asked by task ids, a task that never started is unknown (sacct_array_live_task.txt).
    task_argv = commands.sacct_argv([f"{array_id}_0", f"{array_id}_3"])
    real = _rows(fixture("sacct_array_live_task.txt"), "4574", "|")
    fake = [
        _normal(r, array_id, "4574", "|")
        for r in slurm.run(task_argv, timeout_s=5).stdout.splitlines()
    ]
    assert fake == real

    # 3 cancelled while pending, the others complete (sacct_array_finished.txt, 4574): 3 has
    # no record at all.
    backend.cancel([f"{array_id}_3"])
    for task in (0, 1):
        slurm.finish(f"{array_id}_{task}", 0)
    slurm.start_tasks(array_id)
    for task in (2, 4):
        slurm.finish(f"{array_id}_{task}", 0)
    real = _rows(fixture("sacct_array_finished.txt"), "4574", "|")
    fake = [
        _normal(r, array_id, "4574", "|") for r in slurm.run(argv, timeout_s=5).stdout.splitlines()
    ]
    drop_reason = [[v for i, v in enumerate(row) if i != 4] for row in fake]
    assert drop_reason == [[v for i, v in enumerate(row) if i != 4] for row in real]
    records = backend.accounting([array_id])
    assert sorted(records) == [f"{array_id}_{i}" for i in (0, 1, 2, 4)]
    assert {r.token for r in records.values()} == {"arr0y5"}
    assert backend.accounting([f"{array_id}_3"]) == {}


def test_a_whole_array_cancelled_matches_the_captures() -> None:
    # sacct_array_finished.txt and sacct_array_finished_by_comment.txt, array 4592:
    # `--array=0-3%1`, scancel of the array while task 0 ran.
    slurm, backend, script = _array_cluster("fx array cancel", "cance1a")
    array_id = backend.submit(script, array="0-3%1")
    slurm.start_tasks(array_id)
    slurm.clock.advance(3)
    backend.cancel([array_id])
    assert {t.state for t in slurm.tasks(array_id)} == {"CANCELLED by 0"}
    assert backend.queue() == []
    real = _rows(fixture("sacct_array_finished.txt"), "4592", "|")
    out = slurm.run(commands.sacct_argv([array_id]), timeout_s=5).stdout
    assert [_normal(r, array_id, "4592", "|") for r in out.splitlines()] == real
    records = backend.accounting([array_id])
    assert sorted(records) == [f"{array_id}_{i}" for i in range(4)]
    assert {r.state for r in records.values()} == {RunState.CANCELLED}
    assert [records[f"{array_id}_{i}"].started_at is None for i in range(4)] == [
        False,
        True,
        True,
        True,
    ]

    since = datetime.fromtimestamp(slurm.clock() - 300)
    argv = commands.sacct_finished_argv(account="lab", user="root", since=since)
    real = _rows(fixture("sacct_array_finished_by_comment.txt"), "4592", "|")
    out = slurm.run(argv, timeout_s=5).stdout
    assert [_normal(r, array_id, "4592", "|") for r in out.splitlines()] == real
    found = backend.finished_jobs(since)
    assert [(f.job_id, f.token) for f in found] == [
        (f"{array_id}_{i}", "cance1a") for i in range(4)
    ]


def test_a_held_array_cancelled_is_one_row() -> None:
    # sacct_array_finished.txt, 4581: `--hold --array=5-9`, then scancel of the array.
    slurm, backend, script = _array_cluster("fx array held", "h01d59")
    array_id = backend.submit(script, array="5-9")
    for task in slurm.tasks(array_id):
        slurm.set_pending_reason(task.job_id, "JobHeldUser")
    assert [e.reason for e in backend.queue()] == ["JobHeldUser"] * 5
    slurm.clock.advance(10)
    backend.cancel([array_id])
    real = _rows(fixture("sacct_array_finished.txt"), "4581", "|")
    out = slurm.run(commands.sacct_argv([array_id]), timeout_s=5).stdout
    assert [_normal(r, array_id, "4581", "|") for r in out.splitlines()] == real


def test_one_task_fails_alone_and_a_running_task_can_be_cancelled() -> None:
    # sacct_array_finished.txt, 4582 (task 1 exits 3) and 4575_1 (cancelled while running).
    slurm, backend, script = _array_cluster("fx array fail", "fa1l02")
    array_id = backend.submit(script, array="0-2")
    slurm.start_tasks(array_id)
    slurm.clock.advance(5)
    for task, code in [(0, 0), (1, 3), (2, 0)]:
        slurm.finish(f"{array_id}_{task}", code, max_rss="4584K")
    real = _rows(fixture("sacct_array_finished.txt"), "4582", "|")
    out = slurm.run(commands.sacct_argv([array_id]), timeout_s=5).stdout
    assert [_normal(r, array_id, "4582", "|") for r in out.splitlines()] == real
    assert slurm.file(slurm.job(f"{array_id}_1").run_dir.exit_marker) == f"3 {int(slurm.clock())}\n"

    slurm2, backend2, script2 = _array_cluster("fx array list", "arr1157")
    list_id = backend2.submit(script2, array="1,3,5-7%2")
    assert [t.array_task for t in slurm2.start_tasks(list_id)] == [1, 3]
    started = slurm2.file(slurm2.job(f"{list_id}_1").run_dir.started_marker)
    assert started is not None and started.split()[2] == f"{list_id}_1"
    slurm2.clock.advance(10)
    backend2.cancel([f"{list_id}_1"])
    real = _rows(fixture("sacct_array_scancel_task.txt"), "4575", "|")
    out = slurm2.run(commands.sacct_argv([f"{list_id}_1"]), timeout_s=5).stdout
    assert [_normal(r, list_id, "4575", "|") for r in out.splitlines()] == real
    assert [t.array_task for t in slurm2.start_tasks(list_id)] == [5], "the throttle frees one"


def test_max_array_size_comes_from_scontrol_and_is_enforced() -> None:
    slurm, backend, script = _array_cluster("fx max", "m")
    assert backend.max_array_size() == 1001
    assert slurm.calls["scontrol"] == 1 and slurm.ctld_rpcs == 1
    out = slurm.run(["scontrol", "show", "config"], timeout_s=5).stdout
    assert out == fixture("scontrol_show_config.txt")
    slurm.max_array_size = 50
    assert backend.max_array_size() == 50
    with pytest.raises(SlurmRejected) as rejected:
        backend.submit(script, array="0-50")
    assert rejected.value.stderr == fixture("sbatch_array_too_big.stderr")
    assert backend.submit(script, array="0-49%4") == "100"
    slurm.ctld_down = True
    with pytest.raises(SlurmUnreachable):
        backend.max_array_size()


def test_a_task_needs_task_run_dir_for_its_markers() -> None:
    slurm, backend, script = _array_cluster("fx", "t")
    slurm.task_run_dir = None
    array_id = backend.submit(script, array="0-1")
    with pytest.raises(AssertionError, match="task_run_dir"):
        slurm.start(f"{array_id}_0")
    slurm.start(f"{array_id}_1", marker=False)


def test_an_array_submitted_by_hand_shows_in_the_labs_queue() -> None:
    slurm, backend, _ = _array_cluster("fx", "t")
    tasks = slurm.submit_array_by_hand("bobs-sweep", "0-3%2", gpus=1)
    array_id = tasks[0].array_job_id
    assert array_id is not None
    slurm.start_tasks(array_id)
    entries = backend.queue()
    assert [
        (e.job_id, e.user, e.gpus, e.token) for e in entries if e.state is RunState.RUNNING
    ] == [
        (f"{array_id}_0", "bob", 1, None),
        (f"{array_id}_1", "bob", 1, None),
    ]
    assert len(entries) == 4
