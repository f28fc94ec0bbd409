"""The daemon's tables: runs, and the append-only events that say how each got where it is."""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    experiment: str
    owner: str = Field(index=True)
    owner_uid: int
    priority: int = Field(default=0)
    state: str = Field(index=True)
    spec_yaml: str
    spec_hash: str
    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    run_dir: str = ""

    # The exact code (spec's code:): the commit the user named, resolved; the commit the job checks
    # out (a snapshot on top of it when the working tree was dirty); where it came from.
    code_repo: str | None = None
    code_commit: str | None = None
    code_checkout: str | None = None
    code_dirty: bool = False
    # The data versions (spec's data:), as JSON: [{path, repo, rev, md5, size, nfiles, dest, env}]
    # with dest relative to the job's working directory.
    data_json: str | None = None

    # One token per submission attempt; it rides in the job's --comment so a crash between sbatch
    # and the commit that records the job id can be repaired by finding the job by token.
    token: str | None = Field(default=None, index=True)
    attempt: int = 0
    slurm_job_id: str | None = Field(default=None, index=True)

    created_at: float
    claimed_at: float | None = None  # when the run went SUBMITTING (drives the submit grace)
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None

    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None  # Slurm's reason, or ours (why it failed, why it waits)
    elapsed_s: int | None = None
    total_cpu_s: float | None = None
    max_rss_bytes: int | None = None
    stderr_tail: str | None = None

    # The job's exit marker has been seen; the final state waits for sacct's record.
    end_seen_at: float | None = None
    marker_exit_code: int | None = None
    cancel_requested_by: str | None = None
    held_by: str | None = None
    updated_at: float


class Event(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True, foreign_key="run.id")
    at: float
    actor: str
    from_state: str | None
    to_state: str | None
    reason: str = ""


class Audit(SQLModel, table=True):
    """Every request that changes something, and every refusal: who, when, before and after."""

    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    actor: str
    role: str
    action: str
    target: str  # "run 42", "quota lab.gpus"
    before: str | None = None
    after: str | None = None
    allowed: bool
    detail: str = ""


class QuotaOverride(SQLModel, table=True):
    """A quota set by a lead at run time (`hpcops quota set`); it wins over the config's."""

    scope: str = Field(primary_key=True)  # "lab", "per_user", "user:alice", "partition:gpu"
    resource: str = Field(primary_key=True)  # "jobs", "cpus", "gpus"
    value: int | None  # None: explicitly unlimited
    set_by: str
    set_at: float
