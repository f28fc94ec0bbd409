"""The fake Slurm speaks like the real one: its answers have the shape of the captured 22.05 output
(tests/fixtures/slurm) and go through the real parsers, so the engine's tests mean something."""

from __future__ import annotations

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
