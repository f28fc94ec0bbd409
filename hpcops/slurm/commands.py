"""Slurm command lines, built as argument lists by pure functions (no quoting here: a transport
that crosses into a shell quotes once, at that boundary).

Formats are chosen for Slurm 22.05 (docs/notes-slurm.md): `squeue --json` ignores every filter,
so squeue gets an explicit --format; `sacct --json` reports exit 3 as success, so sacct gets
--parsable2.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from hpcops.names import is_job_id
from hpcops.slurm.arrays import is_array_option

# ASCII unit separator between squeue/sinfo fields: a job name or a comment may hold '|' or spaces,
# never this control character.
FIELD_SEP = "\x1f"

# squeue fields, in order. Free-text fields (comment, name) come last.
SQUEUE_FIELDS: tuple[tuple[str, str], ...] = (
    ("job_id", "%i"),
    ("state", "%T"),
    ("reason", "%r"),
    ("user", "%u"),
    ("account", "%a"),
    ("partition", "%P"),
    ("cpus", "%C"),
    ("gres", "%b"),
    ("nodes", "%D"),
    ("submit_time", "%V"),
    ("start_time", "%S"),
    ("time_limit", "%l"),
    ("comment", "%k"),
    ("name", "%j"),
)

# sacct fields, in order. JobName may hold the separator; the parser rejoins it.
SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "JobName",
    "State",
    "ExitCode",
    "Reason",
    "Submit",
    "Start",
    "End",
    "ElapsedRaw",
    "TotalCPU",
    "MaxRSS",
    "AllocTRES",
    "Comment",
    "Partition",
    "User",
)
SACCT_NAME_INDEX = 1

SACCT_FIND_FIELDS: tuple[str, ...] = ("JobID", "Comment", "State", "JobName")

# Finished states for sacct --state: with it, sacct selects jobs by end time and also finds jobs
# that never became eligible (held, cancelled while pending), which it otherwise misses
# (tests/fixtures/slurm/README.md, Slurm 22.05).
FINISHED_STATES = "BF,CA,CD,DL,F,NF,OOM,PR,TO"

SINFO_FIELDS: tuple[tuple[str, str], ...] = (
    ("partition", "%R"),
    ("time_limit", "%l"),
    ("nodes", "%D"),
    ("cpus", "%c"),
    ("memory_mb", "%m"),
    ("gres", "%G"),
    ("availability", "%a"),
)


def sbatch_argv(script_path: str, array: str | None = None) -> list[str]:
    """`array`: the `--array` value (arrays.array_option builds it), e.g. "3-4,9-12%4"."""
    # --export=NONE here as well as on the script's #SBATCH line: sbatch lets an SBATCH_EXPORT in
    # the daemon's environment override #SBATCH lines (measured on 22.05: the daemon's variables
    # reached the job again), but a command-line option overrides the environment.
    argv = ["sbatch", "--parsable", "--export=NONE"]
    if array is not None:
        if not is_array_option(array):
            raise ValueError(f"sbatch: {array[:40]!r} is not an --array value hpcops writes")
        argv.append(f"--array={array}")
    return [*argv, script_path]


def squeue_argv(*, account: str | None, user: str | None) -> list[str]:
    """One squeue for every live job of the lab: filtered by the lab's account (which also shows
    jobs submitted by hand, outside hpcops), else by the daemon's user.

    --array: one line per array task, pending ones too. Without it squeue folds an array's
    pending tasks into one `123_[...]` and cuts that field at 31 characters without a mark
    (`4589_[0-1,3,6,10,15,21,28,36,45`: tests/fixtures/slurm/README.md), losing tasks. Same
    RPCs either way (the folding is squeue's own)."""
    argv = [
        "squeue",
        "--noheader",
        "--array",
        "--format=" + FIELD_SEP.join(f for _, f in SQUEUE_FIELDS),
    ]
    if account:
        argv.append(f"--account={account}")
    elif user:
        argv.append(f"--user={user}")
    return argv


def _checked_ids(job_ids: Sequence[str], command: str) -> list[str]:
    if not job_ids:
        raise ValueError(f"{command} needs at least one job id")
    bad = [job_id for job_id in job_ids if not is_job_id(job_id)]
    if bad:
        raise ValueError(f"{command}: {bad[0][:40]!r} is not a Slurm job id")
    return list(job_ids)


def sacct_argv(job_ids: Sequence[str]) -> list[str]:
    """Final accounting for jobs that ended; sacct asks slurmdbd, not slurmctld (0 RPCs there)."""
    job_ids = _checked_ids(job_ids, "sacct")
    return [
        "sacct",
        "--noheader",
        "--parsable2",
        "--jobs=" + ",".join(job_ids),
        "--format=" + ",".join(SACCT_FIELDS),
    ]


def _sacct_window_argv(
    fields: Sequence[str],
    *,
    account: str | None,
    user: str | None,
    since: datetime,
    extra: Sequence[str] = (),
) -> list[str]:
    """One row per allocation of the lab (its account, else the daemon's user) from `since` to
    now. sacct needs both ends of the window once --state is given (Slurm 22.05)."""
    argv = [
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        "--starttime=" + since.strftime("%Y-%m-%dT%H:%M:%S"),
        "--endtime=now",
        *extra,
        "--format=" + ",".join(fields),
    ]
    if account:
        argv += ["--allusers", f"--accounts={account}"]
    elif user:
        argv.append(f"--user={user}")
    return argv


def sacct_finished_argv(*, account: str | None, user: str | None, since: datetime) -> list[str]:
    """Jobs that ended since `since`, with their comments: how a submission interrupted by a crash
    is found by token once its job has already left squeue. sacct cannot filter by comment, so the
    caller does; the window keeps the answer small. (sacct shows a job's comment only after the
    job ended; live jobs are found by squeue's %k.)"""
    # Only the daemon's own jobs: a job a member submits by hand carrying a run's token (its
    # --comment is theirs to set) must never be adopted as that run.
    own = [f"--user={user}"] if user and account else []
    return _sacct_window_argv(
        SACCT_FIND_FIELDS,
        account=account,
        user=user,
        since=since,
        extra=["--state=" + FINISHED_STATES, *own],
    )


SACCT_USAGE_FIELDS: tuple[str, ...] = ("JobID", "User", "ElapsedRaw", "AllocTRES")


def sacct_usage_argv(*, account: str | None, user: str | None, since: datetime) -> list[str]:
    """Every allocation of the lab since `since` with its size and elapsed time: fair share."""
    return _sacct_window_argv(SACCT_USAGE_FIELDS, account=account, user=user, since=since)


def scancel_argv(job_ids: Sequence[str]) -> list[str]:
    return ["scancel", *_checked_ids(job_ids, "scancel")]


def scontrol_config_argv() -> list[str]:
    """slurmctld's configuration (one RPC, REQUEST_BUILD_INFO): MaxArraySize lives there."""
    return ["scontrol", "show", "config"]


def sinfo_argv() -> list[str]:
    return ["sinfo", "--noheader", "--format=" + FIELD_SEP.join(f for _, f in SINFO_FIELDS)]
