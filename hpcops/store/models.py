"""The daemon's tables: runs, and the append-only events that say how each got where it is; the
audit log and quota overrides; schedules and their firings; the MLflow outbox and relay cursors.

Also the typed updates the store takes (RunUpdate, TrackingFields, ScheduleUpdate): the fields a
caller may change, so that mypy catches a misspelt one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from hpcops.errors import StoreError
from hpcops.states import RunState


class RunStateText(TypeDecorator[RunState]):
    """A RunState kept as its name in a text column, as it always was: a database written
    before `Run.state` was a RunState reads back unchanged."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: RunState | str | None, dialect: Dialect) -> str | None:
        # A plain string is accepted (queries compare with `.value`), but only a state's name.
        return None if value is None else RunState(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> RunState | None:
        return None if value is None else RunState(value)


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    experiment: str
    owner: str = Field(index=True)
    owner_uid: int
    priority: int = Field(default=0)
    state: RunState = Field(sa_type=RunStateText, index=True)
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
    # The Slurm job that stages the data before the run's job (data.staging: job).
    staging_job_id: str | None = None

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

    # Set when a schedule's firing queued the run (hpcops schedule).
    schedule_id: int | None = Field(default=None, index=True)
    firing_id: int | None = None

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

    # A point of a sweep (hpcops/sweeps): its sweep, its index among the sweep's points, its task
    # index in the Slurm array it was released in (set with the claim, before sbatch: after a
    # crash the point is found by its array's token and this index), and the value of the
    # sweep's objective metric that its MLflow record ended with.
    sweep_id: int | None = Field(default=None, index=True, foreign_key="sweep.id")
    sweep_index: int | None = None
    array_task: int | None = None
    objective: float | None = None

    # Retries (a spec's `retry:`; docs/design.md, "Attempts"). The spec's retry.max_attempts,
    # kept for `ls` and `show` (the engine decides from the spec itself); attempts that ended
    # (rows of Attempt, kept by the store with each attempt's end); the current attempt's Slurm
    # requeues (the same job id pending again); when the run was last queued, for release order
    # (None: created_at); and the earliest time its next attempt may be released (backoff_s).
    max_attempts: int = 1
    attempts_ended: int = 0
    restarts: int = 0
    queued_at: float | None = None
    retry_not_before: float | None = None

    # A step of a pipeline (hpcops/pipeline; store: PipelineStep): its pipeline and step, and
    # whether the step still waits for the steps before it (`gated`: release leaves it alone
    # until the engine opens the gate, with the inputs its job gets, as JSON {NAME: value}).
    pipeline_id: int | None = Field(default=None, index=True)
    pipeline_step: str | None = None
    gated: bool = False
    inputs_json: str | None = None


class Attempt(SQLModel, table=True):
    """One ended attempt of a run: one Slurm job, from its submission to its end. Written by the
    store in the transaction that records the end (Store.transition's `ended`), so a crash keeps
    both or neither. A Slurm requeue (same job id) is a restart within one attempt."""

    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True, foreign_key="run.id")
    number: int  # 1, 2, ... in the order the attempts ended
    slurm_job_id: str = Field(index=True)
    state: RunState = Field(sa_type=RunStateText)  # the state the attempt ended in
    slurm_state: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    elapsed_s: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    total_cpu_s: float | None = None
    alloc_cpus: int | None = None
    alloc_gpus: int | None = None
    max_rss_bytes: int | None = None


class AttemptEnd(TypedDict, total=False):
    """How an attempt ended (Store.transition's `ended`): `state` always, the rest as known. The
    store adds the run, the number and the job id (and the run's restarts, if not given)."""

    state: RunState
    slurm_state: str | None
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    elapsed_s: int | None
    exit_code: int | None
    signal: int | None
    reason: str | None
    total_cpu_s: float | None
    alloc_cpus: int | None
    alloc_gpus: int | None
    max_rss_bytes: int | None
    restarts: int  # Slurm's requeues within the attempt (default: the run's count)


class Sweep(SQLModel, table=True):
    """One spec with a `sweep:` block: one run per point, released into Slurm as job arrays.

    The runs are the truth about the points; this row holds what is the sweep's own: its
    definition, the points it drew, and its MLflow parent run."""

    id: int | None = Field(default=None, primary_key=True)
    name: str
    experiment: str
    owner: str = Field(index=True)
    owner_uid: int
    spec_yaml: str  # the sweep's spec, canonical, with a random search's seed pinned
    kind: str  # "grid", "list" or "random"
    n_points: int
    points_json: str  # [{"lr": 0.1, "seed": 1}, ...] in index order, keys as in the sweep
    objective_metric: str | None = None
    objective_mode: str | None = None  # "max" or "min"
    max_parallel: int | None = None
    created_at: float
    updated_at: float
    rerun_of_sweep: int | None = None
    # The MLflow parent run the points' runs are nested under, and the best point so far.
    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    best_run_id: int | None = None
    best_value: float | None = None
    closed_at: float | None = None  # the parent run was ended: every point has ended


class Pipeline(SQLModel, table=True):
    """A pipeline file queued (hpcops/pipeline): its steps are PipelineStep rows, and a spec
    step's runs are ordinary runs that name it (Run.pipeline_id, Run.pipeline_step). The runs are
    the truth about the spec steps; this row holds the graph and the pipeline's MLflow parent."""

    id: int | None = Field(default=None, primary_key=True)
    name: str
    experiment: str  # the MLflow experiment of its parent run: its first spec step's
    owner: str = Field(index=True)
    owner_uid: int
    source: str  # the file it was submitted as
    definition_json: str  # the PipelineDef, as JSON (steps in the file's order)
    specs_json: str  # {step: canonical spec YAML} of each spec step, as queued (pinned)
    created_at: float
    updated_at: float
    # When every step has ended (the engine sets it), and how: COMPLETED when all did.
    ended_at: float | None = Field(default=None, index=True)
    outcome: str | None = None
    # Set when a schedule's firing queued the pipeline.
    schedule_id: int | None = Field(default=None, index=True)
    firing_id: int | None = None
    # The MLflow parent run every step's record is nested under; closed once it has ended.
    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    closed_at: float | None = None


class PipelineStep(SQLModel, table=True):
    """One step of a pipeline. A spec step's state is its run's (`run_id`) or its sweep's
    points'; a register step (no Slurm job) keeps its own `state`, `reason` and `result_json`.

    `opened_at` is the gate: set in the one transaction that lets the step's runs be released
    (Store.open_step), so a crash leaves a step either still waiting or released, never both."""

    __table_args__ = (UniqueConstraint("pipeline_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = Field(index=True, foreign_key="pipeline.id")
    name: str
    position: int  # in the pipeline file's order
    kind: str  # "run", "sweep" or "register"
    run_id: int | None = None  # a run step's current run (a rerun replaces it)
    sweep_id: int | None = None  # a sweep step's current sweep
    opened_at: float | None = None
    # A register step's model: the run whose model it registers (the model step's run, or its
    # sweep's best point), fixed when the step opens.
    model_run_id: int | None = None
    # A register step's own lifecycle: QUEUED (waiting), RUNNING (the gate opened: the tracker
    # promotes), then COMPLETED, FAILED or CANCELLED, with why and the Promotion as JSON.
    state: RunState | None = Field(default=None, sa_type=RunStateText)
    reason: str | None = None
    result_json: str | None = None
    ended_at: float | None = None
    updated_at: float


class PipelineUpdate(TypedDict, total=False):
    """The fields of a pipeline that change after it is queued (Store.update_pipeline)."""

    ended_at: float | None
    outcome: str | None
    mlflow_run_id: str | None
    mlflow_experiment_id: str | None
    closed_at: float | None


class SweepUpdate(TypedDict, total=False):
    """The fields of a sweep that change after it is queued (Store.update_sweep)."""

    mlflow_run_id: str | None
    mlflow_experiment_id: str | None
    best_run_id: int | None
    best_value: float | None
    closed_at: float | None


class TrackingFields(TypedDict, total=False):
    """Where a run's MLflow record is (Store.set_tracking_fields): the server's run, and in relay
    mode the file store on shared scratch the job logs into, and its run there."""

    mlflow_run_id: str | None
    mlflow_experiment_id: str | None
    mlflow_artifact_uri: str | None
    mlflow_relay_dir: str | None
    mlflow_relay_run_id: str | None


class RunUpdate(TrackingFields, total=False):
    """The fields of a run that change during its life (Store.transition). A key that is given
    is written, None included (`held_by=None` clears it); a key left out is left alone."""

    priority: int
    run_dir: str
    staging_job_id: str | None
    token: str | None
    attempt: int
    slurm_job_id: str | None
    claimed_at: float | None
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    signal: int | None
    reason: str | None
    elapsed_s: int | None
    total_cpu_s: float | None
    max_rss_bytes: int | None
    stderr_tail: str | None
    end_seen_at: float | None
    marker_exit_code: int | None
    cancel_requested_by: str | None
    held_by: str | None
    slurm_state: str | None
    alloc_cpus: int | None
    alloc_gpus: int | None
    array_task: int | None
    objective: float | None
    restarts: int
    queued_at: float | None
    retry_not_before: float | None
    gated: bool
    inputs_json: str | None


def apply_fields(target: object, fields: Mapping[str, object], allowed: type, what: str) -> None:
    """Set the given fields; a key the typed update (`allowed`, a TypedDict) does not name is
    refused at run time too, for callers that pass a dict mypy cannot see into."""
    names = allowed.__annotations__.keys() | getattr(allowed, "__optional_keys__", frozenset())
    for key, value in fields.items():
        if key not in names:
            raise StoreError(f"{what} have no field {key!r} that can be changed")
        setattr(target, key, value)


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


class Schedule(SQLModel, table=True):
    """A spec, or a pipeline, that is queued again on a cron, an interval, or (a spec) when its
    DVC-tracked data changes (`hpcops schedule add`).

    The source of truth for schedules; APScheduler's job store (same database) only drives
    when they fire. A removed schedule stays, marked, so its runs keep their provenance."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    owner: str
    owner_uid: int
    spec_yaml: str  # canonical, without the spec's schedule block; a pipeline's definition
    spec_name: str  # the spec's name, or the pipeline's
    # What a firing queues: "spec" (a run of spec_yaml) or "pipeline" (pipeline_json, the wire
    # form hpcops.pipeline.pipeline_to_wire gives, with each step's spec unpinned).
    kind: str = "spec"
    pipeline_json: str | None = None
    cron: str | None = None
    every_s: int | None = None
    timezone: str
    catch_up: str  # timing.CATCH_UP_POLICIES
    catch_up_grace_s: int
    allow_overlap: bool = False
    paused: bool = False
    last_error: str | None = None  # the latest firing's error; cleared by a firing that queues
    # On data change (scheduling/datachange.py): every check_every_s the daemon reads the data
    # versions and fires when they differ from its last run's. A check that fires nothing
    # leaves only these fields, not a Firing row.
    on_data_change: bool = False
    check_every_s: int | None = None
    last_checked_at: float | None = None
    last_check: str | None = None  # "no change: ...", "changed: ...", "failed: ..."
    last_check_ok: bool | None = None  # False: the check could not read the versions
    created_at: float
    updated_at: float
    removed_at: float | None = None
    removed_by: str | None = None


class ScheduleUpdate(TypedDict, total=False):
    """The fields of a schedule a request changes (Store.update_schedule); a check's result goes
    through Store.record_check, a firing's through Store.record_firing."""

    paused: bool
    last_error: str | None
    removed_at: float | None
    removed_by: str | None


class Firing(SQLModel, table=True):
    """One firing of a schedule and what came of it. At most one per (schedule, scheduled
    time): a firing repeated after a crash finds its record and queues nothing twice."""

    __table_args__ = (UniqueConstraint("schedule_id", "scheduled_for"),)

    id: int | None = Field(default=None, primary_key=True)
    schedule_id: int = Field(foreign_key="schedule.id", index=True)
    scheduled_for: float  # epoch seconds, rounded to the millisecond
    fired_at: float
    kind: str  # "scheduled", "catch-up", "run-now", "data-change"
    actor: str  # "daemon", or who asked for run-now
    outcome: str  # "submitted", "skipped", "error"
    reason: str = ""
    run_id: int | None = None
    pipeline_id: int | None = None  # the pipeline it queued (a pipeline schedule's firing)
    # The data versions it was for, as Run.data_json: its run's, or (no run) those its check
    # read, so that a firing that failed is not retried for the same data on every check.
    data_json: str | None = None


class TrackingOp(SQLModel, table=True):
    """The outbox: an MLflow operation a state change owes, written in the same transaction as
    that change, done by the tracking thread when the server answers (hpcops/tracking/worker.py).

    kind: "create" (queued: the run's record, status SCHEDULED), "submitted" (Slurm took it: job
    id and the sbatch script), "close" (ended: final status, accounting, logs), "attempt" (an
    attempt ended and the next one is queued: that attempt's figures and logs, the record stays
    open), "reopen" (an ended run queued again by `hpcops retry`: the record goes back to
    RUNNING), and for a point of a sweep "sweep" (before its create: the sweep's parent run;
    after its close: the point's objective, the sweep's best, the parent's end).
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
    # The attempt the operation is about (Attempt.number; the one being submitted for
    # "submitted"): None for the run as a whole ("create"), and in rows written before retries.
    attempt: int | None = None


class RelayCursor(SQLModel, table=True):
    """How far the relay has copied one run's file store: per metric file the byte offset, per
    param/tag the value sent, per artifact its size and mtime. Written after the server took the
    batch, so a crash resends at most one batch, which the server takes again unchanged."""

    run_id: int = Field(primary_key=True, foreign_key="run.id")
    key: str = Field(primary_key=True)  # "metric:loss", "param:lr", "tag:x", "artifact:a/b.pt"
    value: str
