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

    # Provenance of the code (filled by code shipping; tagged on the MLflow record when present).
    code_repo: str | None = None
    code_commit: str | None = None
    code_dirty: bool = False

    # The run's MLflow record (hpcops/tracking). The server's run, once the daemon created it;
    # in relay mode also the file store on shared scratch the job logs into, and its run there.
    mlflow_run_id: str | None = Field(default=None, index=True)
    mlflow_experiment_id: str | None = None
    mlflow_artifact_uri: str | None = None
    mlflow_relay_dir: str | None = None
    mlflow_relay_run_id: str | None = None
    # A rerun: the MLflow run (and, when it is this daemon's, the hpcops run) it reproduces.
    rerun_of_mlflow: str | None = None
    rerun_of_run: int | None = None
    # From sacct's record of the ended job, for the MLflow record: its raw state ("CANCELLED by
    # 0") and what Slurm allocated (AllocTRES), which may differ from what the spec asked for.
    slurm_state: str | None = None
    alloc_cpus: int | None = None
    alloc_gpus: int | None = None


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


class TrackingOp(SQLModel, table=True):
    """The outbox: an MLflow operation a state change owes, written in the same transaction as
    that change, done by the tracking thread when the server answers (hpcops/tracking/worker.py).

    kind: "create" (queued: the run's record, status SCHEDULED), "submitted" (Slurm took it: job
    id and the sbatch script), "close" (ended: final status, accounting, logs).
    """

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True, foreign_key="run.id")
    kind: str
    created_at: float
    attempts: int = 0
    not_before: float = 0.0
    last_error: str | None = None
    done_at: float | None = Field(default=None, index=True)
    failed: bool = False  # given up after repeated refusals; the error says why


class RelayCursor(SQLModel, table=True):
    """How far the relay has copied one run's file store: per metric file the byte offset, per
    param/tag the value sent, per artifact its size and mtime. Written after the server took the
    batch, so a crash resends at most one batch, which the server takes again unchanged."""

    run_id: int = Field(primary_key=True, foreign_key="run.id")
    key: str = Field(primary_key=True)  # "metric:loss", "param:lr", "tag:x", "artifact:a/b.pt"
    value: str
