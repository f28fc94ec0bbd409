"""A fake Slurm 22.05 behind hpcops' Transport interface, for the engine's offline tests.

`FakeSlurm` is a `Transport` (hpcops/transport/base.py): the real `CommandBackend` sends it the
argv that hpcops/slurm/commands.py builds, and it answers with text in exactly the formats of the
output captured from the real cluster (tests/fixtures/slurm, whose README says which command made
each file), so the real parsers run unchanged. Refusals and an unreachable controller answer with
the captured stderr itself. It also holds the run directories' files in memory: the script the
daemon writes, the markers the "job" writes.

Tests drive the jobs through a small API (`start`, `finish`, `die`, `preempt`, `vanish`, ...)
that does what Slurm and the job script would do, including their quirks (docs/notes-slurm.md,
tests/fixtures/slurm/README.md): sacct shows a job's comment only once it ended, reduces exit
codes modulo 128, lags a job's start and end, and may show a placeholder `allocation` row.

Job arrays (`sbatch --array=3-4,9-12%4`) are one master id and one `FakeJob` per task, id
`"<master>_<task>"`, sharing the script's name and comment. As in 22.05 (tests/fixtures/slurm,
"Job arrays"): squeue folds the tasks that never started into one `123_[4-9%4]` line unless
asked `--array`; sacct knows a task by its own id only once it started, shows the tasks that
never started as one `123_[...]` row when asked for the master id, and never shows a task
cancelled alone while it pended; scancel takes a task or the whole array; a task over the
throttle pends with `JobArrayTaskLimit`, and `start` refuses to start it. Where a task writes
its markers is `task_run_dir(array script, task)`, which a test sets.

`calls` counts commands by kind ("sbatch", "squeue", "sacct", "sacct_finished", "sacct_usage",
"scancel", "sinfo", "scontrol") so a test can assert that the engine is polite to slurmctld;
while the cluster is out of reach, "unreached" counts every attempt (files too) and
"unreached_commands" the commands alone. `ctld_rpcs` counts slurmctld RPCs as sdiag does on the
dev cluster: sbatch 1, also for an array; squeue 2; scancel 1; sinfo 2; sacct 0, it asks
slurmdbd (docs/notes-slurm.md); scontrol show config 1 (tests/fixtures/slurm/README.md).

Test-only code: nothing here runs a process.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import groupby
from pathlib import Path, PurePath, PurePosixPath

from hpcops.rundir import RunDir
from hpcops.slurm.commands import FIELD_SEP
from hpcops.transport.base import (
    SMALL_FILE_MAX_BYTES,
    CommandResult,
    FileChunk,
    TransportError,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "slurm"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# No capture of a full association limit is stored; these are sbatch's words for it in Slurm 22.05
# (slurm_errno.c, ESLURM_ACCOUNTING_POLICY), the same text tests/unit/test_slurm.py checks.
LIMIT_STDERR = (
    "sbatch: error: AssocMaxSubmitJobLimit\n"
    "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
    "(job submit limit, user's size and/or time limits)\n"
)
# Measured with slurmctld stopped, not stored as a file (tests/fixtures/slurm/README.md).
SINFO_UNREACHABLE = "slurm_load_partitions: Unable to contact slurm controller (connect failure)\n"

# The request reached slurmctld, its answer did not come back (a message _UNREACHABLE knows).
SBATCH_REPLY_LOST = (
    "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"
)

# What `refuse_sbatch` can answer: (exit code, stderr).
REFUSALS: dict[str, tuple[int, str]] = {
    "limit": (1, LIMIT_STDERR),
    "partition": (1, fixture("sbatch_rejected_partition.stderr")),
    "qos": (1, fixture("sbatch_rejected_qos.stderr")),
    "account": (1, fixture("sbatch_rejected_account.stderr")),
    "unreachable": (1, fixture("sbatch_unreachable.stderr")),
}

# Job states squeue lists by default; a finished job leaves it at once (docs/notes-slurm.md). A
# state word nobody knows is listed too: a newer Slurm's live state would be.
_FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
# slurmctld RPCs per command, as sdiag counted them (module docstring).
CTLD_RPCS = {"sbatch": 1, "squeue": 2, "scancel": 1, "sinfo": 2, "scontrol": 1}
# What sbatch says for an index at or above MaxArraySize (sbatch_array_too_big.stderr).
ARRAY_TOO_BIG_STDERR = fixture("sbatch_array_too_big.stderr")
# The dev cluster's figures for a 1-CPU job (sacct_mixed.txt).
_ALLOC_TRES = "billing={cpus},cpu={cpus},mem=1000M,node=1"
_STEP_TRES = "cpu={cpus},mem=1000M,node=1"


class DaemonCrash(BaseException):
    """The daemon died here (kill -9 at a fault point). A BaseException, so that no `except
    Exception` in the engine survives it, as nothing survives a SIGKILL."""


class FakeClock:
    """The engine's clock: time moves only when a test says so."""

    def __init__(self, start: float = 1_795_400_000.0) -> None:  # 2026-11-23, like the fixtures
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def slurm_time(epoch: float | None, missing: str = "Unknown") -> str:
    """`2026-11-23T03:18:33`, local time, as squeue's %V/%S and sacct print it."""
    if epoch is None:
        return missing
    return datetime.fromtimestamp(epoch).strftime(_TIME_FORMAT)


@dataclass
class FakeJob:
    """One job as slurmctld and slurmdbd hold it."""

    job_id: str
    name: str
    comment: str  # "hpcops:<token>", or "" for none
    script: PurePosixPath
    user: str
    account: str
    partition: str
    cpus: int
    gpus: int
    time_limit_min: int
    submitted_at: float
    state: str = "PENDING"  # Slurm's own word, as squeue %T / sacct State print it
    reason: str = "None"
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int = 0  # sacct's, already reduced modulo 128
    signal: int = 0
    batch_state: str | None = None  # the .batch step's state; None: no step row
    batch_exit: str = "0:0"
    max_rss: str = ""
    # What sacct shows for this job: "record" (its record), "none" (slurmdbd has not recorded it
    # yet), "placeholder" (the `allocation` row of a job's first second, sacct_first_second.txt).
    sacct: str = "record"
    # sacct's State when it differs from slurmctld's (a runaway record: RUNNING in slurmdbd long
    # after the job ended; an attempt Slurm requeued: PREEMPTED while squeue says PENDING).
    sacct_state: str | None = None
    # A record of another job under this id (ids reused): its comment, once it ended.
    sacct_comment: str | None = None
    requeues: int = 0
    # An array task: its array's (master) id, its index, the array's throttle (%N).
    array_job_id: str | None = None
    array_task: int | None = None
    array_throttle: int | None = None
    task_dir: PurePosixPath | None = None  # where a task writes its markers (task_run_dir)
    # A task cancelled alone while it pended: slurmdbd never gets a record of it (4574_3 in
    # tests/fixtures/slurm/README.md).
    unrecorded: bool = False

    @property
    def run_dir(self) -> RunDir:
        if self.array_job_id is None:
            return RunDir(Path(self.script.parent))
        if self.task_dir is None:
            raise AssertionError(
                f"array task {self.job_id}: set FakeSlurm.task_run_dir to say where it writes "
                "its markers"
            )
        return RunDir(Path(self.task_dir))

    @property
    def folded(self) -> bool:
        """Still in its array's pending record: a task that never started (squeue folds these
        into one `123_[...]` line, sacct into one row)."""
        return (
            self.array_job_id is not None
            and self.started_at is None
            and self.requeues == 0
            and not self.unrecorded
        )

    @property
    def in_squeue(self) -> bool:
        return self.state.split(" ", 1)[0] not in _FINISHED and self.state != "GONE"


@dataclass
class _Refusal:
    kind: str
    name: str | None
    times: int | None  # None: until lifted


class FakeSlurm:
    """A Transport answering Slurm's commands from an in-memory cluster (module docstring)."""

    kind = "local"
    connections_opened = 0

    def __init__(
        self,
        clock: FakeClock,
        *,
        user: str = "hpcops",
        account: str = "lab",
        cancel_uid: int = 1000,
        first_job_id: int = 100,
    ) -> None:
        self.clock = clock
        self.user = user
        self.account = account
        self.cancel_uid = cancel_uid
        self.jobs: dict[str, FakeJob] = {}
        self.files: dict[str, str] = {}
        self.dirs: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.commands: list[tuple[str, ...]] = []
        self.sinfo_text = fixture("sinfo_partitions.txt")
        # slurmctld stopped: its commands fail with the captured stderr, sacct still answers
        # (it asks slurmdbd). transport_down: nothing is reached at all (SSH lost).
        self.ctld_down = False
        self.dbd_down = False  # slurmdbd (sacct) out of reach; slurmctld may still answer
        self.transport_down = False
        # sbatch reaches slurmctld, the job is made, the answer is lost (`Socket timed out`).
        self.lose_sbatch_reply = 0
        self._refusals: list[_Refusal] = []
        self._before_sbatch: list[Callable[[], object]] = []
        self._lock = threading.RLock()
        self._next_id = first_job_id
        self.max_array_size = 1001  # slurm.conf's MaxArraySize (the dev cluster's)
        self.ctld_rpcs = 0
        # (array script, task index) -> the run directory the task writes its markers in.
        self.task_run_dir: Callable[[PurePosixPath, int], PurePosixPath] | None = None

    # --- the Transport interface --------------------------------------------------------------

    def run(self, argv: list[str], *, timeout_s: float, stdin: str | None = None) -> CommandResult:
        if self.transport_down:
            self.calls["unreached_commands"] += 1
        self._reach()
        command = argv[0]
        handlers: dict[str, Callable[[list[str]], tuple[int, str, str]]] = {
            "sbatch": self._sbatch,
            "squeue": self._squeue,
            "sacct": self._sacct,
            "scancel": self._scancel,
            "sinfo": self._sinfo,
            "scontrol": self._scontrol,
        }
        if command not in handlers:
            raise AssertionError(f"the fake Slurm does not know {argv!r}")
        with self._lock:  # the engine runs a release step's sbatch calls side by side
            self.ctld_rpcs += CTLD_RPCS.get(command, 0)
            rc, out, err = handlers[command](argv)
        return CommandResult(tuple(argv), rc, out, err, 0.0)

    def write_file(self, path: PurePath, data: str, mode: int = 0o640) -> None:
        self._reach()
        self.files[str(path)] = data

    def make_dir(self, path: PurePath, mode: int = 0o750) -> None:
        self._reach()
        self.dirs.add(str(path))

    def remove_files(self, paths: Sequence[PurePath]) -> None:
        self._reach()
        for path in paths:
            self.files.pop(str(path), None)

    def read_small_files(self, paths: Sequence[PurePath]) -> dict[PurePath, str]:
        self._reach()
        return {p: self.files[str(p)][:SMALL_FILE_MAX_BYTES] for p in paths if str(p) in self.files}

    def read_chunk(self, path: PurePath, offset: int, max_bytes: int) -> FileChunk:
        self._reach()
        data = self.files.get(str(path))
        if data is None:
            return FileChunk(b"", max(offset, 0), 0)
        raw = data.encode()
        size = len(raw)
        start = max(0, size + offset) if offset < 0 else min(offset, size)
        return FileChunk(raw[start : start + max_bytes], start, size)

    def close(self) -> None:
        return None

    def _reach(self) -> None:
        if self.transport_down:
            self.calls["unreached"] += 1  # every attempt to reach the cluster, command or file
            raise TransportError("connection to the cluster lost")

    # --- commands ----------------------------------------------------------------------------

    def _sbatch(self, argv: list[str]) -> tuple[int, str, str]:
        # The daemon's environment never reaches a job: --export=NONE on every sbatch.
        assert argv[:3] == ["sbatch", "--parsable", "--export=NONE"], argv
        array = _option(argv, "--array")
        assert len(argv) == (5 if array is not None else 4), argv
        hooks, self._before_sbatch = self._before_sbatch, []
        for hook in hooks:
            hook()  # what happens while the daemon is between its claim and sbatch
        self.calls["sbatch"] += 1
        self.commands.append(tuple(argv))
        if self.ctld_down:
            return 1, "", fixture("sbatch_unreachable.stderr")
        script = PurePosixPath(argv[-1])
        text = self.files.get(str(script))
        if text is None:
            return 1, "", f"sbatch: error: Unable to open file {script}\n"
        directives = _directives(text)
        name = directives.get("job-name", script.name)
        refusal = self._refusal_for(name)
        if refusal is not None:
            rc, stderr = REFUSALS[refusal]
            return rc, "", stderr
        if array is None:
            job_id = self._new_job(script, name, directives).job_id
        else:
            indices, throttle = _array_spec(array)
            if max(indices) >= self.max_array_size:
                return 1, "", ARRAY_TOO_BIG_STDERR
            job_id = self._new_array(script, name, directives, indices, throttle)
        if self.lose_sbatch_reply:
            self.lose_sbatch_reply -= 1
            return 1, "", SBATCH_REPLY_LOST
        return 0, f"{job_id}\n", ""

    def _new_array(
        self,
        script: PurePosixPath,
        name: str,
        directives: dict[str, str],
        indices: list[int],
        throttle: int | None,
    ) -> str:
        """One master id; each task a FakeJob `<master>_<task>` with the script's directives."""
        template = self._new_job(script, name, directives)
        master = template.job_id
        del self.jobs[master]
        for index in indices:
            task_id = f"{master}_{index}"
            self.jobs[task_id] = replace(
                template,
                job_id=task_id,
                array_job_id=master,
                array_task=index,
                array_throttle=throttle,
                task_dir=self.task_run_dir(script, index) if self.task_run_dir else None,
            )
        return master

    def _new_job(self, script: PurePosixPath, name: str, directives: dict[str, str]) -> FakeJob:
        job_id = str(self._next_id)
        self._next_id += 1
        gres = directives.get("gres", "")
        gpus = int(gres.rsplit(":", 1)[1]) if gres.startswith("gpu") else 0
        cpus = int(directives.get("ntasks", "1")) * int(directives.get("cpus-per-task", "1"))
        job = FakeJob(
            job_id=job_id,
            name=name,
            comment=directives.get("comment", ""),
            script=script,
            user=self.user,
            account=directives.get("account", self.account),
            partition=directives.get("partition", "cpu").split(",")[0],
            cpus=cpus,
            gpus=gpus,
            time_limit_min=int(directives.get("time", "60")),
            submitted_at=self.clock(),
        )
        self.jobs[job_id] = job
        return job

    def _refusal_for(self, name: str) -> str | None:
        for refusal in self._refusals:
            if refusal.name is not None and refusal.name != name:
                continue
            if refusal.times is not None:
                refusal.times -= 1
                if refusal.times <= 0:
                    self._refusals.remove(refusal)
            return refusal.kind
        return None

    def _squeue(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls["squeue"] += 1
        self.commands.append(tuple(argv))
        if self.ctld_down:
            return 1, "", fixture("squeue_unreachable.stderr")
        account = _option(argv, "--account")
        user = _option(argv, "--user")
        one_per_task = "--array" in argv
        lines = []
        folded_done: set[str] = set()
        for job in self.jobs.values():
            if not job.in_squeue:
                continue
            if (account and job.account != account) or (user and job.user != user):
                continue
            job_id = job.job_id
            if job.folded and not one_per_task:
                # The array's pending record: one line for all its tasks that never started
                # (squeue_array_running.txt: `4574_[2-4%2]`), where its first such task is.
                assert job.array_job_id is not None
                if job.array_job_id in folded_done:
                    continue
                folded_done.add(job.array_job_id)
                tasks = [t.array_task for t in self._folded_tasks(job.array_job_id) if t.in_squeue]
                job_id = f"{job.array_job_id}_[{_index_list(tasks, job.array_throttle)}]"
            fields = (
                job_id,
                job.state,
                self._reason(job),
                job.user,
                job.account,
                job.partition,
                str(job.cpus),
                f"gres:gpu:{job.gpus}" if job.gpus else "N/A",
                "1",
                slurm_time(job.submitted_at),
                slurm_time(job.started_at, missing="N/A"),
                _limit(job.time_limit_min),
                job.comment or "(null)",
                job.name,
            )
            lines.append(FIELD_SEP.join(fields) + "\n")
        return 0, "".join(lines), ""

    def _reason(self, job: FakeJob) -> str:
        """A pending task whose array already runs as many tasks as its throttle allows waits
        with `JobArrayTaskLimit` (squeue_array_running.txt)."""
        if (
            job.state == "PENDING"
            and job.reason == "None"
            and job.array_job_id is not None
            and job.array_throttle is not None
            and self._running_tasks(job.array_job_id) >= job.array_throttle
        ):
            return "JobArrayTaskLimit"
        return job.reason

    def _tasks(self, array_job_id: str) -> list[FakeJob]:
        tasks = [j for j in self.jobs.values() if j.array_job_id == array_job_id]
        return sorted(tasks, key=lambda j: j.array_task or 0)

    def _folded_tasks(self, array_job_id: str) -> list[FakeJob]:
        return [t for t in self._tasks(array_job_id) if t.folded]

    def _running_tasks(self, array_job_id: str) -> int:
        return sum(1 for t in self._tasks(array_job_id) if t.state == "RUNNING")

    def _sacct(self, argv: list[str]) -> tuple[int, str, str]:
        # sacct asks slurmdbd, not slurmctld: it answers while the controller is down.
        if self.dbd_down:
            self.calls["sacct_unanswered"] += 1
            return 1, "", "sacct: error: slurm_persist_conn_open_without_init: failed\n"
        if "--state=BF,CA,CD,DL,F,NF,OOM,PR,TO" in argv or any(
            a.startswith("--state=") for a in argv
        ):
            self.calls["sacct_finished"] += 1
            self.commands.append(tuple(argv))
            return 0, self._sacct_finished(argv), ""
        if "--allocations" in argv:
            self.calls["sacct_usage"] += 1
            self.commands.append(tuple(argv))
            return 0, self._sacct_usage(argv), ""
        self.calls["sacct"] += 1
        self.commands.append(tuple(argv))
        ids = (_option(argv, "--jobs") or "").split(",")
        rows: dict[tuple[int, int], list[str]] = {}  # rows come back sorted by job id
        for job_id in ids:
            job = self.jobs.get(job_id)
            if job is not None:
                # A task id finds only a task that started: one that never did is still in its
                # array's record (sacct_array_live_task.txt, sacct_array_by_task.txt).
                if not job.folded and not job.unrecorded:
                    rows[_id_key(job)] = self._sacct_rows(job)
                continue
            # An array's id: every task it recorded, and one row for those that never started.
            for task in self._tasks(job_id):
                if not task.folded and not task.unrecorded:
                    rows[_id_key(task)] = self._sacct_rows(task)
            for n, row in enumerate(self._sacct_fold_rows(job_id)):
                rows[(int(job_id), MAX_FAKE_TASK + n)] = [row]
        return 0, "".join(line for key in sorted(rows) for line in rows[key]), ""

    def _fold_groups(self, array_job_id: str) -> list[list[FakeJob]]:
        """The array's tasks that never started, by what happened to them: those still pending,
        and those that ended together (a whole array cancelled while they waited)."""
        tasks = [
            t for t in self._folded_tasks(array_job_id) if t.sacct == "record" and t.state != "GONE"
        ]

        def key(task: FakeJob) -> tuple[str, float]:
            return task.state, task.ended_at or 0.0

        return [list(group) for _, group in groupby(sorted(tasks, key=key), key=key)]

    def _sacct_fold_rows(self, array_job_id: str) -> list[str]:
        """`4574_[2-4%2]|fx array|PENDING|0:0|None|<submit>|Unknown|Unknown|0|00:00:00||||cpu|root`
        while they wait (sacct_array_live.txt); once cancelled, `CANCELLED by 0`, Start `None`,
        an End and the comment (sacct_array_finished.txt, `4592_[1-3%1]`)."""
        rows = []
        for group in self._fold_groups(array_job_id):
            job = group[0]
            indices = _index_list([t.array_task for t in group], job.array_throttle)
            ended = job.ended_at is not None and not job.in_squeue
            start, end = ("None", slurm_time(job.ended_at)) if ended else ("Unknown", "Unknown")
            rows.append(
                f"{array_job_id}_[{indices}]|{job.name}|{job.state}|0:0|{job.reason}|"
                f"{slurm_time(job.submitted_at)}|{start}|{end}|0|00:00:00|||"
                f"{job.comment if ended else ''}|{job.partition}|{job.user}\n"
            )
        return rows

    def _sacct_rows(self, job: FakeJob) -> list[str]:
        if job.sacct == "none" or job.state == "GONE":
            return []
        if job.sacct == "placeholder":
            # sacct_first_second.txt: JobName `allocation`, State PENDING though it started,
            # empty AllocTRES, Comment and Partition.
            start = job.started_at if job.started_at is not None else job.submitted_at
            return [
                f"{job.job_id}|allocation|PENDING|0:0|None|{slurm_time(job.submitted_at)}|"
                f"{slurm_time(start)}|Unknown|0|00:00:00|||||{job.user}\n",
                f"{job.job_id}.batch|batch|RUNNING|0:0||{slurm_time(job.submitted_at)}|"
                f"{slurm_time(start)}|Unknown|0|00:00:00||{_STEP_TRES.format(cpus=job.cpus)}|||\n",
            ]
        state = job.sacct_state or job.state
        ended = job.ended_at is not None and state.split(" ", 1)[0] in _FINISHED
        # The comment shows only once the job has ended (AccountingStoreFlags=job_comment, 22.05).
        comment = (job.sacct_comment or job.comment) if ended else ""
        end = job.ended_at if ended else None
        now = self.clock()
        if job.started_at is None:
            elapsed = 0
        else:
            elapsed = int((end if end is not None else now) - job.started_at)
        ran = job.started_at is not None
        total_cpu = "00:00.002" if ran else "00:00:00"
        alloc = _ALLOC_TRES.format(cpus=job.cpus) if ran else ""
        if job.gpus and ran:
            alloc += f",gres/gpu={job.gpus}"
        reason = job.reason if not ran else "None"
        not_started = "None" if ended else "Unknown"
        rows = [
            f"{job.job_id}|{job.name}|{state}|{job.exit_code}:{job.signal}|{reason}|"
            f"{slurm_time(job.submitted_at)}|{slurm_time(job.started_at, not_started)}|"
            f"{slurm_time(end)}|{elapsed}|{total_cpu}||{alloc}|{comment}|{job.partition}|"
            f"{job.user}\n"
        ]
        if ran and job.batch_state is not None:
            rows.append(
                f"{job.job_id}.batch|batch|{job.batch_state}|{job.batch_exit}||"
                f"{slurm_time(job.started_at)}|{slurm_time(job.started_at)}|{slurm_time(end)}|"
                f"{elapsed}|{total_cpu}|{job.max_rss}|{_STEP_TRES.format(cpus=job.cpus)}|||\n"
            )
        return rows

    def _window(self, argv: list[str]) -> float:
        since = _option(argv, "--starttime")
        assert since is not None, argv
        return datetime.strptime(since, _TIME_FORMAT).timestamp()

    def _sacct_finished(self, argv: list[str]) -> str:
        """`JobID|Comment|State|JobName` of the account's jobs that ended in the window
        (sacct_by_comment_finished.txt)."""
        since = self._window(argv)
        lines = []
        folds_done: set[str] = set()
        for job in sorted(self.jobs.values(), key=_id_key):
            if job.sacct != "record" or job.state == "GONE" or job.unrecorded:
                continue
            if job.folded:
                # Tasks that never started: one row per group (sacct_array_finished_by_comment,
                # `4592_[1-3%1]|hpcops:cance1a|CANCELLED by 0|fx array cancel`).
                assert job.array_job_id is not None
                if job.array_job_id in folds_done:
                    continue
                folds_done.add(job.array_job_id)
                lines += self._finished_fold_rows(job.array_job_id, argv, since)
                continue
            state = job.sacct_state or job.state
            if job.ended_at is None or state.split(" ", 1)[0] not in _FINISHED:
                continue
            if job.ended_at < since:
                continue
            user = _option(argv, "--user")
            if user is not None and job.user != user:
                continue
            comment = job.sacct_comment or job.comment
            lines.append(f"{job.job_id}|{comment}|{state}|{job.name}\n")
        return "".join(lines)

    def _finished_fold_rows(self, array_job_id: str, argv: list[str], since: float) -> list[str]:
        lines = []
        user = _option(argv, "--user")
        for group in self._fold_groups(array_job_id):
            job = group[0]
            if job.in_squeue or job.ended_at is None or job.ended_at < since:
                continue
            if user is not None and job.user != user:
                continue
            indices = _index_list([t.array_task for t in group], job.array_throttle)
            lines.append(f"{array_job_id}_[{indices}]|{job.comment}|{job.state}|{job.name}\n")
        return lines

    def _sacct_usage(self, argv: list[str]) -> str:
        """`JobID|User|ElapsedRaw|AllocTRES` of every allocation in the window."""
        since = self._window(argv)
        now = self.clock()
        lines = []
        for job in sorted(self.jobs.values(), key=_id_key):
            if job.started_at is None or job.sacct != "record":
                continue
            if job.ended_at is not None and job.ended_at < since:
                continue
            elapsed = int((job.ended_at or now) - job.started_at)
            alloc = _ALLOC_TRES.format(cpus=job.cpus)
            if job.gpus:
                alloc += f",gres/gpu={job.gpus}"
            lines.append(f"{job.job_id}|{job.user}|{elapsed}|{alloc}\n")
        return "".join(lines)

    def _scancel(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls["scancel"] += 1
        self.commands.append(tuple(argv))
        ids = argv[1:]
        if self.ctld_down:
            return 8, "", fixture("scancel_unreachable.stderr").replace("30", ids[0], 1)
        for job_id in ids:  # exit 0 even for unknown or finished ids (docs/notes-slurm.md)
            job = self.jobs.get(job_id)
            if job is not None:
                if job.in_squeue:
                    self.cancel(job_id)
                    # One task cancelled while it pended leaves no record (4574_3).
                    job.unrecorded = job.folded
                continue
            for task in self._tasks(job_id):  # an array's id: all its tasks
                if task.in_squeue:
                    self.cancel(task.job_id)
        return 0, "", ""

    def _scontrol(self, argv: list[str]) -> tuple[int, str, str]:
        assert argv == ["scontrol", "show", "config"], argv
        self.calls["scontrol"] += 1
        self.commands.append(tuple(argv))
        if self.ctld_down:
            return 1, "", "slurm_load_ctl_conf error: Unable to contact slurm controller\n"
        text = re.sub(
            r"^MaxArraySize( *)= \d+$",
            f"MaxArraySize\\1= {self.max_array_size}",
            fixture("scontrol_show_config.txt"),
            flags=re.MULTILINE,
        )
        return 0, text, ""

    def _sinfo(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls["sinfo"] += 1
        self.commands.append(tuple(argv))
        if self.ctld_down:
            return 1, "", SINFO_UNREACHABLE
        return 0, self.sinfo_text, ""

    # --- driving the cluster -------------------------------------------------------------------

    def refuse_sbatch(self, kind: str, *, name: str | None = None, times: int | None = 1) -> None:
        """Refuse the next `times` sbatch calls (None: until `accept_sbatch`), of jobs called
        `name` only if given, with Slurm's words for `kind` (REFUSALS)."""
        assert kind in REFUSALS, kind
        self._refusals.append(_Refusal(kind, name, times))

    def accept_sbatch(self) -> None:
        self._refusals.clear()

    def before_next_sbatch(self, hook: Callable[[], object]) -> None:
        """Run `hook` when the next sbatch arrives, before Slurm acts on it: what another thread
        (the API) does while the engine is between its claim and its sbatch."""
        self._before_sbatch.append(hook)

    def job(self, job_id: str) -> FakeJob:
        return self.jobs[job_id]

    def job_named(self, name: str) -> FakeJob:
        [job] = [j for j in self.jobs.values() if j.name == name]
        return job

    def jobs_named(self, name: str) -> list[FakeJob]:
        return [j for j in self.jobs.values() if j.name == name]

    def file(self, path: PurePath) -> str | None:
        return self.files.get(str(path))

    def write(self, path: PurePath, text: str) -> None:
        """A file the job writes (its stderr, say)."""
        self.files[str(path)] = text

    def submit_by_hand(
        self, name: str, *, user: str = "bob", cpus: int = 1, gpus: int = 0, comment: str = ""
    ) -> FakeJob:
        """A job a lab member submitted with sbatch themselves, under the lab's account (with
        any --comment they like)."""
        job = self._new_job(PurePosixPath(f"/home/{user}/{name}.sh"), name, {})
        job.user, job.cpus, job.gpus = user, cpus, gpus
        if comment:
            job.comment = comment
        return job

    def submit_array_by_hand(
        self,
        name: str,
        array: str,
        *,
        user: str = "bob",
        cpus: int = 1,
        gpus: int = 0,
        comment: str = "",
    ) -> list[FakeJob]:
        """An array a lab member submitted themselves (`sbatch --array=<array>`): its tasks."""
        script = PurePosixPath(f"/home/{user}/{name}.sh")
        indices, throttle = _array_spec(array)
        array_id = self._new_array(script, name, {}, indices, throttle)
        tasks = self._tasks(array_id)
        for task in tasks:
            task.user, task.cpus, task.gpus, task.comment = user, cpus, gpus, comment
            task.task_dir = script.parent
        return tasks

    def set_pending_reason(self, job_id: str, reason: str) -> None:
        self.jobs[job_id].reason = reason

    def tasks(self, array_job_id: str) -> list[FakeJob]:
        """An array's tasks, by index."""
        return self._tasks(array_job_id)

    def start_tasks(self, array_job_id: str, n: int | None = None) -> list[FakeJob]:
        """Start the array's pending tasks in index order, as many as its throttle lets run
        (at most `n`), as slurmctld would."""
        started: list[FakeJob] = []
        for task in self._tasks(array_job_id):
            if n is not None and len(started) >= n:
                break
            throttle = task.array_throttle
            if throttle is not None and self._running_tasks(array_job_id) >= throttle:
                break
            if task.state == "PENDING":
                started.append(self.start(task.job_id))
        return started

    def start(self, job_id: str, *, host: str = "vm", marker: bool = True) -> FakeJob:
        """The job starts; its script writes the start marker "<epoch> <host> <job id>" (an
        array task's id is `<array id>_<task>`). slurmctld never starts an array's task beyond
        the array's throttle: neither does this."""
        job = self.jobs[job_id]
        if (
            job.array_job_id is not None
            and job.array_throttle is not None
            and job.state != "RUNNING"
        ):
            running = self._running_tasks(job.array_job_id)
            if running >= job.array_throttle:
                raise AssertionError(
                    f"{job_id}: its array already runs {running} tasks (throttle "
                    f"%{job.array_throttle}); Slurm would not start it"
                )
        job.state, job.reason = "RUNNING", "None"
        job.started_at = self.clock()
        job.batch_state = "RUNNING"
        if marker:
            self.files[str(job.run_dir.started_marker)] = f"{int(self.clock())} {host} {job_id}\n"
            # A requeued job runs the script again, which removes the earlier exit marker.
            self.files.pop(str(job.run_dir.exit_marker), None)
        return job

    def finish(
        self,
        job_id: str,
        exit_code: int = 0,
        *,
        marker: bool = True,
        max_rss: str = "218304K",
        sacct: str = "record",
    ) -> FakeJob:
        """The script ends with `exit_code`: its EXIT trap writes "<code> <epoch>", and sacct
        records COMPLETED 0:0 or FAILED with the code modulo 128 (exit 143 shows 15:0, exit 200
        72:0: tests/fixtures/slurm/README.md)."""
        job = self.jobs[job_id]
        if job.started_at is None:
            self.start(job_id)
        state = "COMPLETED" if exit_code == 0 else "FAILED"
        self._end(job, state, exit_code % 128, 0, batch=(state, f"{exit_code % 128}:0"))
        job.max_rss, job.sacct = max_rss, sacct
        if marker:
            self._exit_marker(job, exit_code)
        return job

    def die(
        self,
        job_id: str,
        state: str,
        *,
        exit_marker: int | None = None,
        exit_code: int = 0,
        signal: int = 0,
        sacct: str = "record",
    ) -> FakeJob:
        """The job ends without its script ending it: TIMEOUT (0:0, `.batch` CANCELLED 0:15),
        "CANCELLED by <uid>", NODE_FAIL, FAILED 0:9 (a memory kill), ... No marker unless
        `exit_marker` is given (the TERM trap writes 143 when Slurm lets it run)."""
        job = self.jobs[job_id]
        batch = ("CANCELLED", "0:15") if job.started_at is not None else None
        if state == "FAILED" and signal == 9:
            batch = (f"CANCELLED by {self.cancel_uid}", "0:9")
        self._end(job, state, exit_code, signal, batch=batch)
        job.sacct = sacct
        if job.started_at is not None and not job.max_rss:
            job.max_rss = "4672K"  # a step that ran has a MaxRSS however it ended (4575_1.batch)
        if exit_marker is not None:
            self._exit_marker(job, exit_marker)
        return job

    def cancel(self, job_id: str) -> FakeJob:
        """scancel: a pending job ends with no step; a running one gets TERM, and the script's
        trap exits 143, writing its exit marker (sacct_mixed.txt, jobs 13 and 14)."""
        job = self.jobs[job_id]
        running = job.started_at is not None
        self.die(job_id, f"CANCELLED by {self.cancel_uid}", exit_marker=143 if running else None)
        return job

    def preempt(
        self, job_id: str, *, sacct_shows: str = "PREEMPTED", reason: str = "BeginTime"
    ) -> FakeJob:
        """PreemptMode=REQUEUE: the job gets TERM (its trap writes exit marker 143) and pends
        again under the same id. sacct shows the taken-back attempt (`PREEMPTED`) or already the
        new one (`PENDING`: the PREEMPTED record can be gone by the time one asks, 22.05)."""
        job = self.jobs[job_id]
        self._exit_marker(job, 143)
        return self._requeue(job, sacct_shows, reason)

    def node_fail(
        self, job_id: str, *, requeue: bool = True, sacct_shows: str = "NODE_FAIL"
    ) -> FakeJob:
        """The node is lost: no marker is written. With requeue the job pends again under the
        same id; without it, it ends NODE_FAIL."""
        job = self.jobs[job_id]
        if not requeue:
            return self.die(job_id, "NODE_FAIL")
        return self._requeue(job, sacct_shows, "BeginTime")

    def _requeue(self, job: FakeJob, sacct_shows: str, reason: str) -> FakeJob:
        job.requeues += 1
        ended = self.clock()
        job.state, job.reason = "PENDING", reason
        if sacct_shows == "PENDING":
            job.sacct_state = None
            job.started_at, job.ended_at, job.batch_state = None, None, None
        else:
            job.sacct_state = sacct_shows
            job.ended_at = ended
        return job

    def vanish(self, job_id: str) -> FakeJob:
        """The job is gone from squeue and slurmdbd has no record of it (lost, purged)."""
        job = self.jobs[job_id]
        job.state = "GONE"
        return job

    def _end(
        self,
        job: FakeJob,
        state: str,
        exit_code: int,
        signal: int,
        *,
        batch: tuple[str, str] | None,
    ) -> None:
        job.state, job.sacct_state = state, None
        job.ended_at = self.clock()
        job.exit_code, job.signal = exit_code, signal
        if batch is not None and job.started_at is not None:
            job.batch_state, job.batch_exit = batch

    def _exit_marker(self, job: FakeJob, code: int) -> None:
        self.files[str(job.run_dir.exit_marker)] = f"{code} {int(self.clock())}\n"


def _directives(script: str) -> dict[str, str]:
    """The `#SBATCH --key=value` lines of a script (sbatch stops at the first command line)."""
    found: dict[str, str] = {}
    for line in script.splitlines()[1:]:
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        match = re.fullmatch(r"#SBATCH\s+--([a-z-]+)(?:=(.*))?", line.strip())
        if match:
            found[match.group(1)] = match.group(2) or ""
    return found


# Fold rows sort after every task of their array.
MAX_FAKE_TASK = 10**8


def _id_key(job: FakeJob) -> tuple[int, int]:
    """sacct's order: by job id, an array's tasks by index."""
    if job.array_job_id is not None:
        return int(job.array_job_id), job.array_task or 0
    return int(job.job_id), -1


def _array_spec(value: str) -> tuple[list[int], int | None]:
    """`3-4,9-12%4` → ([3, 4, 9, 10, 11, 12], 4). The fake's own reading of sbatch's option,
    independent of hpcops/slurm/arrays.py: a test of one must not lean on the other."""
    body, _, throttle = value.partition("%")
    indices: set[int] = set()
    for part in body.split(","):
        first, _, last = part.partition("-")
        indices.update(range(int(first), int(last or first) + 1))
    return sorted(indices), int(throttle) if throttle else None


def _index_list(indices: Sequence[int | None], throttle: int | None) -> str:
    """[2, 3, 4], 2 → `2-4%2`; [2, 4], 2 → `2,4%2`, as squeue and sacct print pending tasks."""
    parts: list[str] = []
    ordered = sorted(i for i in indices if i is not None)
    for n, index in enumerate(ordered):
        if n and index == ordered[n - 1] + 1:
            if n + 1 < len(ordered) and ordered[n + 1] == index + 1:
                continue
            parts[-1] += f"-{index}"
        else:
            parts.append(str(index))
    return ",".join(parts) + (f"%{throttle}" if throttle is not None else "")


def _option(argv: Sequence[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _limit(minutes: int) -> str:
    """squeue's %l: `30:00`, `2:00:00`, `1-00:00:00`."""
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{mins:02d}:00"
    if hours:
        return f"{hours}:{mins:02d}:00"
    return f"{mins}:00"
