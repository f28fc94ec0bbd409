"""Pure parsers for Slurm 22.05's output, unit-tested on output captured from the real dev cluster
(tests/fixtures/slurm). Every parser takes text and returns data; none raises on a field it does
not understand — it records None and the caller decides.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime

from hpcops.names import is_job_id
from hpcops.slurm import arrays
from hpcops.slurm.commands import (
    FIELD_SEP,
    SACCT_FIELDS,
    SACCT_FIND_FIELDS,
    SACCT_NAME_INDEX,
    SACCT_USAGE_FIELDS,
    SINFO_FIELDS,
    SQUEUE_FIELDS,
)
from hpcops.states import RunState, from_slurm

log = logging.getLogger(__name__)

TOKEN_PREFIX = "hpcops:"  # noqa: S105 (a comment prefix, not a secret)

# The most entries the pending-task lines of one squeue or sacct answer may expand to, all lines
# together (each line is also capped by arrays.MAX_TASKS_PER_LINE): a few broken or hostile
# lines must not cost the daemon its memory.
MAX_EXPANDED_TASKS = 200_000


@dataclass(frozen=True)
class QueueEntry:
    """One live job as squeue shows it."""

    job_id: str
    state: RunState
    slurm_state: str
    reason: str
    user: str
    account: str
    partition: str
    cpus: int
    gpus: int
    submitted_at: float | None
    started_at: float | None
    comment: str
    name: str
    # An array task's array id and index (`123_4` → "123", 4); None for a plain job.
    array_job_id: str | None = None
    array_task: int | None = None

    @property
    def token(self) -> str | None:
        return token_of(self.comment)


@dataclass(frozen=True)
class AccountingRecord:
    """A job's sacct record: the job row, with MaxRSS from its steps (only steps carry it)."""

    job_id: str
    state: RunState
    slurm_state: str
    exit_code: int | None
    signal: int | None
    reason: str
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    elapsed_s: int | None
    total_cpu_s: float | None
    max_rss_bytes: int | None
    alloc_tres: str
    partition: str
    comment: str
    name: str
    array_job_id: str | None = None
    array_task: int | None = None

    @property
    def token(self) -> str | None:
        return token_of(self.comment)


@dataclass(frozen=True)
class FinishedJob:
    """A job that ended, as `sacct --state=<finished>` lists it: enough to find it by token."""

    job_id: str
    state: RunState
    slurm_state: str
    comment: str
    name: str
    array_job_id: str | None = None
    array_task: int | None = None

    @property
    def token(self) -> str | None:
        return token_of(self.comment)


@dataclass(frozen=True)
class UsageRecord:
    """One allocation's size and elapsed time, for fair share."""

    job_id: str
    user: str
    elapsed_s: int
    cpus: int
    gpus: int


@dataclass(frozen=True)
class Partition:
    name: str
    max_time_s: int | None  # None: no limit
    available: bool


def token_of(comment: str) -> str | None:
    comment = comment.strip()
    if comment.startswith(TOKEN_PREFIX):
        token = comment[len(TOKEN_PREFIX) :].split()[0] if comment[len(TOKEN_PREFIX) :] else ""
        return token or None
    return None


def parse_sbatch_parsable(stdout: str) -> str:
    """`sbatch --parsable` prints `ID` or `ID;cluster`."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = line.split(";", 1)[0].strip()
    if not is_job_id(job_id):
        raise ValueError(f"sbatch --parsable printed {stdout.strip()!r}, not a job id")
    return job_id


# slurmctld did not answer: the request may or may not have reached it, so nothing may be concluded
# about the job (Slurm 22.05 messages, see tests/fixtures/slurm/*unreachable*).
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted|"
    r"Connection refused|Connection timed out|Communication connection failure|"
    r"Transport endpoint is not connected|slurm_persist_conn_open|"
    r"Unable to establish connection|Slurm backup controller in standby mode",
    re.IGNORECASE,
)

# Slurm refused because a limit is full right now; the same request succeeds later.
_LIMITED = re.compile(
    r"AssocMax|QOSMax|MaxSubmit|job submit limit|Job violates accounting/QOS policy|"
    r"AssocGrp|QOSGrp|Resource temporarily unavailable|Slurm temporarily unable",
    re.IGNORECASE,
)


def is_unreachable(stderr: str) -> bool:
    return bool(_UNREACHABLE.search(stderr))


def is_limit(stderr: str) -> bool:
    return bool(_LIMITED.search(stderr))


def _int(text: str) -> int | None:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return None


def parse_slurm_timestamp(text: str) -> float | None:
    """`2026-11-23T03:12:45` in the cluster's local time; "Unknown", "None", "N/A" → None."""
    text = text.strip()
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def parse_duration_s(text: str) -> float | None:
    """Slurm durations: `[D-]HH:MM:SS[.mmm]`, `MM:SS[.mmm]`, `UNLIMITED`/`INVALID` → None."""
    text = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text)
    if match is None:
        if re.fullmatch(r"\d+", text):  # plain minutes, as in `%l` for some limits
            return float(text) * 60
        return None
    days, hours, minutes, seconds = match.groups()
    if days is not None and hours is None:
        # "D-HH:MM" has no seconds part: the regex read it as hours=None, minutes=HH, seconds=MM.
        return int(days) * 86400 + int(minutes) * 3600 + float(seconds) * 60
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_size_bytes(text: str) -> int | None:
    """sacct sizes such as `204800K`, `1.50G`, `0`; empty → None."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", text.strip())
    if match is None:
        return None
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """sacct's `3:0` is exit status 3, signal 0; `0:9` a job killed by SIGKILL."""
    code, _, sig = text.strip().partition(":")
    return _int(code), _int(sig)


def parse_gpus(gres: str) -> int:
    """GPUs in a TRES/GRES string: `gres:gpu:2`, `gres/gpu=2`, `gpu:a100:2`, `N/A` → 0."""
    total = 0
    for match in re.finditer(r"gpu(?::[A-Za-z0-9_.-]+)?[:=](\d+)", gres):
        total += int(match.group(1))
    return total


def _split_around(parts: list[str], n: int, free: int) -> list[str] | None:
    """n fields where field `free` may itself hold separators: rejoin the surplus into it."""
    if len(parts) < n:
        return None
    surplus = len(parts) - n
    return [*parts[:free], "|".join(parts[free : free + surplus + 1]), *parts[free + surplus + 1 :]]


def _split(line: str, sep: str, n: int) -> list[str] | None:
    """Split into n fields; the last (free-text) field keeps any separators inside it."""
    parts = line.split(sep, n - 1)
    return parts if len(parts) == n else None


# One job a JobID field stands for: (job id, array id, task index); the last two None for a
# plain job.
_JobKey = tuple[str, str | None, int | None]


class _TaskIds:
    """The jobs each JobID field of one answer stands for: a plain job `123`, an array task
    `123_4`, or the pending tasks `123_[4-9%4]` one per task. Expansions share one budget
    (MAX_EXPANDED_TASKS); a field that does not parse, or would go over it, stands for nothing
    and is counted in `refused` (the caller logs it once)."""

    def __init__(self, budget: int = MAX_EXPANDED_TASKS) -> None:
        self.left = budget
        self.refused: list[str] = []

    def __call__(self, text: str) -> list[_JobKey]:
        text = text.strip()
        if "_" not in text:
            return [(text, None, None)] if is_job_id(text) else []
        split = arrays.split_array_id(text)
        if split is None:
            if "_[" in text:
                self.refused.append(text[:60])  # a cut-off index list: tasks unknown
            return []
        array_id, expression = split
        if expression.isdigit():
            return [(f"{array_id}_{int(expression)}", array_id, int(expression))]
        try:
            tasks = arrays.expand_tasks(
                expression, limit=min(arrays.MAX_TASKS_PER_LINE, max(self.left, 0))
            )
        except ValueError:
            self.refused.append(text[:60])
            return []
        self.left -= len(tasks)
        return [(f"{array_id}_{task}", array_id, task) for task in tasks]

    def log_refused(self, command: str) -> None:
        if self.refused:
            log.warning(
                "%s: %d array line(s) not understood or too large, left out: %s",
                command,
                len(self.refused),
                ", ".join(repr(text) for text in self.refused[:3]),
            )


def parse_squeue(stdout: str) -> list[QueueEntry]:
    """One entry per job; a line of pending array tasks (`123_[4-9%4]`) one per task."""
    entries = []
    names = [name for name, _ in SQUEUE_FIELDS]
    task_ids = _TaskIds()
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = _split(line, FIELD_SEP, len(names))
        if parts is None:
            continue
        row = dict(zip(names, parts, strict=True))
        keys = task_ids(row["job_id"])
        if not keys:
            continue
        entry = QueueEntry(
            job_id=keys[0][0],
            state=from_slurm(row["state"]),
            slurm_state=row["state"].strip(),
            reason=row["reason"].strip(),
            user=row["user"].strip(),
            account=row["account"].strip(),
            partition=row["partition"].strip(),
            cpus=_int(row["cpus"]) or 0,
            gpus=parse_gpus(row["gres"]),
            submitted_at=parse_slurm_timestamp(row["submit_time"]),
            started_at=parse_slurm_timestamp(row["start_time"]),
            comment=row["comment"].strip(),
            name=row["name"],
            array_job_id=keys[0][1],
            array_task=keys[0][2],
        )
        entries.append(entry)
        entries += [
            replace(entry, job_id=job_id, array_job_id=array_id, array_task=task)
            for job_id, array_id, task in keys[1:]
        ]
    task_ids.log_refused("squeue")
    return entries


def _job_and_step(job_id: str) -> tuple[str, str]:
    """`123.batch` → ("123", "batch"); `123_4.batch` → ("123_4", "batch"). A row of tasks that
    never started has no step, and its cut form ends in `...` (`123_[1,3,19...%4]`): no step."""
    job_id = job_id.strip()
    if "[" in job_id:
        return job_id, ""
    job, _, step = job_id.partition(".")
    return job, step


def parse_sacct(stdout: str) -> dict[str, AccountingRecord]:
    """Job rows keyed by job id; step rows (`ID.batch`, `ID.extern`, `ID.0`, and an array
    task's `123_4.batch`) only add MaxRSS. A row of array tasks that never started
    (`123_[5-9]`, cancelled while pending) is one record per task, keyed `123_5`...; a task's own
    row wins over such a row."""
    jobs: dict[str, tuple[dict[str, str], _JobKey]] = {}
    step_rss: dict[str, int] = {}
    task_ids = _TaskIds()
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = _split_around(line.split("|"), len(SACCT_FIELDS), SACCT_NAME_INDEX)
        if parts is None:
            continue
        row = dict(zip(SACCT_FIELDS, parts, strict=True))
        job_id, step = _job_and_step(row["JobID"])
        if step:
            if is_job_id(job_id):
                rss = parse_size_bytes(row["MaxRSS"])
                if rss is not None:
                    step_rss[job_id] = max(step_rss.get(job_id, 0), rss)
            continue
        pending_tasks = "[" in job_id
        for key in task_ids(job_id):
            if pending_tasks and key[0] in jobs:
                continue  # the task's own row came first
            jobs[key[0]] = (row, key)
    task_ids.log_refused("sacct")
    records = {}
    for job_id, (row, (_, array_id, task)) in jobs.items():
        exit_code, signal = parse_exit_code(row["ExitCode"])
        elapsed = _int(row["ElapsedRaw"])
        cpu = parse_duration_s(row["TotalCPU"])
        records[job_id] = AccountingRecord(
            job_id=job_id,
            state=from_slurm(row["State"]),
            slurm_state=row["State"].strip(),
            exit_code=exit_code,
            signal=signal,
            reason=row["Reason"].strip(),
            submitted_at=parse_slurm_timestamp(row["Submit"]),
            started_at=parse_slurm_timestamp(row["Start"]),
            ended_at=parse_slurm_timestamp(row["End"]),
            elapsed_s=elapsed,
            total_cpu_s=cpu,
            max_rss_bytes=step_rss.get(job_id),
            alloc_tres=row["AllocTRES"].strip(),
            partition=row["Partition"].strip(),
            comment=row["Comment"].strip(),
            name=row["JobName"],
            array_job_id=array_id,
            array_task=task,
        )
    return records


def parse_sacct_finished(stdout: str) -> list[FinishedJob]:
    """One job per row; a row of array tasks that never started (`123_[5-9]`) one per task."""
    jobs = []
    task_ids = _TaskIds()
    for line in stdout.splitlines():
        parts = _split(line, "|", len(SACCT_FIND_FIELDS))
        if parts is None:
            continue
        row = dict(zip(SACCT_FIND_FIELDS, parts, strict=True))
        if _job_and_step(row["JobID"])[1]:
            continue  # a step row (without --allocations)
        for job_id, array_id, task in task_ids(row["JobID"]):
            jobs.append(
                FinishedJob(
                    job_id=job_id,
                    state=from_slurm(row["State"]),
                    slurm_state=row["State"].strip(),
                    comment=row["Comment"].strip(),
                    name=row["JobName"],
                    array_job_id=array_id,
                    array_task=task,
                )
            )
    task_ids.log_refused("sacct")
    return jobs


def parse_max_array_size(stdout: str) -> int | None:
    """`MaxArraySize           = 1001` from `scontrol show config`; None if absent or odd."""
    match = re.search(r"^MaxArraySize\s*=\s*([0-9]{1,9})\s*$", stdout, re.MULTILINE)
    return int(match.group(1)) if match else None


def parse_tres_cpus(tres: str) -> int:
    """CPUs in an AllocTRES string such as `billing=1,cpu=4,mem=1000M,node=1`."""
    match = re.search(r"(?:^|,)cpu=(\d+)", tres)
    return int(match.group(1)) if match else 0


def parse_sacct_usage(stdout: str) -> list[UsageRecord]:
    records = []
    for line in stdout.splitlines():
        parts = _split(line, "|", len(SACCT_USAGE_FIELDS))
        if parts is None or "." in parts[0] or not is_job_id(parts[0].strip()):
            continue
        job_id, user, elapsed, tres = parts
        records.append(
            UsageRecord(
                job_id=job_id.strip(),
                user=user.strip(),
                elapsed_s=_int(elapsed) or 0,
                cpus=parse_tres_cpus(tres),
                gpus=parse_gpus(tres),
            )
        )
    return records


def parse_sinfo_partitions(stdout: str) -> dict[str, Partition]:
    partitions = {}
    names = [name for name, _ in SINFO_FIELDS]
    for line in stdout.splitlines():
        parts = _split(line, FIELD_SEP, len(names))
        if parts is None:
            continue
        row = dict(zip(names, parts, strict=True))
        limit = row["time_limit"].strip()
        max_time = (
            None if limit.lower() in {"infinite", "unlimited", "n/a"} else parse_duration_s(limit)
        )
        name = row["partition"].strip()
        # One line per node state group: a partition may repeat; the limit is the same on each.
        partitions[name] = Partition(
            name=name,
            max_time_s=int(max_time) if max_time is not None else None,
            available=row["availability"].strip().lower() == "up",
        )
    return partitions
