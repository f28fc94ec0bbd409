"""What a run's MLflow record holds, as pure functions of the run: tags, params, metrics, status.

The daemon writes three batches per run (creation, submission, closing), and one per attempt of
a run that has several (`attempt_batch`); each is computed here from the run's row or the
attempt's, so what the record says is tested on plain data, without a server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hpcops.spec import ParamValue, Spec
from hpcops.states import RunState
from hpcops.store import Attempt, Run

# Tags hpcops owns. A relayed job cannot overwrite them, and rerun reads them back.
TAG_PREFIX = "hpcops."
KEY_TAG = "hpcops.key"  # the client-made key that makes creation idempotent
RUN_ID_TAG = "hpcops.run_id"
RERUN_OF_TAG = "hpcops.rerun_of"
RERUN_BY_TAG = "hpcops.rerun_by"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting: a sweep's point under its parent
USER_TAG = "mlflow.user"
RUN_NAME_TAG = "mlflow.runName"
# Where the code came from, in MLflow's own tags (the rest of mlflow.source.* is the job's).
REPO_TAG = "mlflow.source.git.repoURL"
COMMIT_TAG = "mlflow.source.git.commit"
SLURM_PREFIX = "slurm."  # Slurm's figures of the run's job and of each attempt
PIPELINE_ID_TAG = "hpcops.pipeline_id"
PIPELINE_STEP_TAG = "hpcops.pipeline_step"
SPEC_ARTIFACT = "hpcops/spec.yaml"
SCRIPT_ARTIFACT = "hpcops/job.sbatch"
ARTIFACT_DIR = "hpcops"

# MLflow's own run statuses (mlflow.entities.RunStatus).
SCHEDULED = "SCHEDULED"
RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"

_STATUS_OF: dict[RunState, str] = {
    RunState.COMPLETED: FINISHED,
    # Stopped from outside rather than failing on its own: a user's scancel, or a preemption
    # that did not requeue the job.
    RunState.CANCELLED: KILLED,
    RunState.PREEMPTED: KILLED,
    RunState.FAILED: FAILED,
    RunState.TIMEOUT: FAILED,
    RunState.OUT_OF_MEMORY: FAILED,
    RunState.NODE_FAIL: FAILED,
    RunState.UNKNOWN: FAILED,
}


def daemon_owned(key: str) -> bool:
    """Whether the daemon records this metric, param or tag key itself (every one this module
    makes is): a relayed job's own of the same name is not copied, or it would say what Slurm
    and the daemon say instead of them (an exit code, a state, the commit, a data version)."""
    return key in (USER_TAG, RUN_NAME_TAG, PARENT_TAG, REPO_TAG, COMMIT_TAG) or key.startswith(
        (TAG_PREFIX, SLURM_PREFIX)
    )


def mlflow_status(state: RunState) -> str:
    """The MLflow status for a run that ended in `state`."""
    if not state.is_terminal:
        raise ValueError(f"{state} has not ended")
    return _STATUS_OF[state]


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    timestamp_ms: int
    step: int = 0


@dataclass(frozen=True)
class Batch:
    """One log_batch request's worth: metrics, params and tags."""

    metrics: list[MetricPoint] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.params or self.tags)

    def merged(self, other: Batch) -> Batch:
        """Both in one (the other's values win a clash); the server cuts it to its limits."""
        return Batch(
            metrics=[*self.metrics, *other.metrics],
            params={**self.params, **other.params},
            tags={**self.tags, **other.tags},
        )


def instance_key(lab: str, home: Path, run_id: int) -> str:
    """A key no other daemon's run shares, even on a server several labs use: the lab, a hash
    of the daemon's home, and the run id."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    return f"{lab}:{digest}:{run_id}"


def param_text(value: ParamValue) -> str:
    """A param as MLflow keeps it (text), spelled as the job's HPCOPS_PARAM_ variable spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def params_of(spec: Spec) -> dict[str, str]:
    return {key: param_text(value) for key, value in spec.params.items()}


def creation_tags(
    run: Run,
    spec: Spec,
    *,
    key: str,
    version: str,
    data_versions: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> dict[str, str]:
    """Tags the record is created with, while the run waits in hpcops' queue; a point of a
    sweep's also name its sweep and its index, a pipeline step's run its pipeline and step, and
    both, once it exists, the parent run they are nested under (the sweep's, the pipeline's)."""
    assert run.id is not None
    tags = dict(spec.tags)  # the spec's own tags, under hpcops' (which win)
    tags.update(
        {
            USER_TAG: run.owner,
            RUN_NAME_TAG: run.name,
            KEY_TAG: key,
            RUN_ID_TAG: str(run.id),
            "hpcops.owner": run.owner,
            "hpcops.priority": str(run.priority),
            "hpcops.spec_hash": run.spec_hash,
            "hpcops.version": version,
        }
    )
    if run.code_repo:
        tags["hpcops.git.repo"] = run.code_repo
        tags[REPO_TAG] = run.code_repo
    if run.code_commit:
        tags["hpcops.git.commit"] = run.code_commit
        tags[COMMIT_TAG] = run.code_commit
        tags["hpcops.git.dirty"] = "true" if run.code_dirty else "false"
        if run.code_dirty and run.code_checkout:
            # The snapshot of the uncommitted changes, in the lab's mirror: what a rerun checks out.
            tags["hpcops.git.snapshot"] = run.code_checkout
    for name, version_id in sorted((data_versions or {}).items()):
        tags[f"hpcops.data.{name}"] = version_id
    if run.rerun_of_mlflow:
        tags[RERUN_OF_TAG] = run.rerun_of_mlflow
    if run.rerun_of_run is not None:
        tags["hpcops.rerun_of_run"] = str(run.rerun_of_run)
    if run.sweep_id is not None:
        tags["hpcops.sweep_id"] = str(run.sweep_id)
        if run.sweep_index is not None:
            tags["hpcops.sweep_index"] = str(run.sweep_index)
    if run.pipeline_id is not None:
        tags[PIPELINE_ID_TAG] = str(run.pipeline_id)
        if run.pipeline_step:
            tags[PIPELINE_STEP_TAG] = run.pipeline_step
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    return tags


def submission_tags(run: Run, *, cluster: str | None, mode: str) -> dict[str, str]:
    """Tags once Slurm took the job: its id, and which attempt of the run it is (the job's
    HPCOPS_ATTEMPT, the `<n>` of `slurm.attempt.<n>.*`); `hpcops.claim` counts the run's
    submissions, one more when a crash or a refusal made the daemon submit an attempt again."""
    tags = {
        "hpcops.slurm_job_id": run.slurm_job_id or "",
        "hpcops.partition": run.partition or "",
        "hpcops.attempt": str(run.attempts_ended + 1),
        "hpcops.claim": str(run.attempt),
        "hpcops.tracking_mode": mode,
    }
    if cluster:
        tags["hpcops.cluster"] = cluster
    return {k: v for k, v in tags.items() if v}


def _slurm_figures(job: Run | Attempt) -> tuple[dict[str, float], dict[str, str]]:
    """One job's Slurm accounting, as (numbers, words) by short name: the figures a run's
    record holds of its last job (`closing_batch`) and of each attempt (`attempt_batch`)."""
    state = RunState(job.state)
    numbers: dict[str, float | int | None] = {
        "elapsed_s": job.elapsed_s,
        "cpu_time_s": job.total_cpu_s,
        "max_rss_bytes": job.max_rss_bytes,
        "exit_code": job.exit_code,
        "alloc_cpus": job.alloc_cpus,
        "alloc_gpus": job.alloc_gpus,
    }
    words = {"state": state.value, "slurm_state": job.slurm_state or state.value}
    if job.exit_code is not None:
        words["exit_code"] = f"{job.exit_code}:{job.signal or 0}"
    if job.reason:
        words["reason"] = job.reason[:5000]
    if job.slurm_job_id:
        words["job_id"] = job.slurm_job_id
    return {k: float(v) for k, v in numbers.items() if v is not None}, words


# The run-level tags of the last job's words, named as they were before attempts existed.
_CLOSING_TAGS = {
    "state": "hpcops.state",
    "slurm_state": f"{SLURM_PREFIX}state",
    "exit_code": f"{SLURM_PREFIX}exit_code",
    "reason": "hpcops.reason",
    "job_id": "hpcops.slurm_job_id",
}


def closing_batch(run: Run, *, end_ms: int) -> Batch:
    """Slurm's accounting of the ended job: numbers as metrics, words as tags; one batch
    whatever the number of figures (MLflow's log_batch takes up to 1000 metrics and 100 tags)."""
    numbers, words = _slurm_figures(run)
    metrics = [MetricPoint(SLURM_PREFIX + key, value, end_ms, 0) for key, value in numbers.items()]
    tags = {_CLOSING_TAGS[key]: value for key, value in words.items()}
    return Batch(metrics=metrics, tags=tags)


def attempt_prefix(number: int) -> str:
    """Where one attempt's figures live in the record: `slurm.attempt.<n>.<figure>`."""
    return f"{SLURM_PREFIX}attempt.{number}."


def attempt_artifact_dir(number: int) -> str:
    """Where one attempt's logs live in the record (under hpcops' own artifact directory, so
    that a job's own `attempts/` cannot collide with them)."""
    return f"{ARTIFACT_DIR}/attempts/{number}"


def attempt_batch(attempt: Attempt) -> Batch:
    """One ended attempt's Slurm figures, kept apart from every other attempt's by its number:
    the same figures as `closing_batch`, plus its requeues within the attempt and its start and
    end (UTC). Timestamped with the attempt's end, so logging it again changes nothing."""
    numbers, words = _slurm_figures(attempt)
    numbers["restarts"] = float(attempt.restarts)
    for key, epoch in (("started", attempt.started_at), ("ended", attempt.ended_at)):
        if epoch is not None:
            words[key] = utc_text(epoch)
    prefix = attempt_prefix(attempt.number)
    at_ms = int((attempt.ended_at or 0.0) * 1000)
    metrics = [MetricPoint(prefix + key, value, at_ms, 0) for key, value in numbers.items()]
    return Batch(metrics=metrics, tags={prefix + key: value for key, value in words.items()})


def utc_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ui_url(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """The run's page in the MLflow UI, when the record lives on a server."""
    if not (run_id and experiment_id) or not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


_CLUSTER_LINE = re.compile(r"^\s*ClusterName\s*=\s*([A-Za-z0-9._-]+)", re.IGNORECASE | re.MULTILINE)


def cluster_name(slurm_conf_text: str) -> str | None:
    """ClusterName from slurm.conf's text (slurm.conf(5): keys are case-insensitive)."""
    match = _CLUSTER_LINE.search(slurm_conf_text)
    return match.group(1) if match else None


MLFLOW_RUN_ID_RE = re.compile(r"[0-9a-f]{32}")
