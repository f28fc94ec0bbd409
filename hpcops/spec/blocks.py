"""The blocks a spec is made of, each a pydantic model: resources, data targets, code, schedule,
retries and checkpoint; and what every spec model shares (MODEL_CONFIG, a param's value type).

The spec itself is in model.py, a sweep's block in sweepdef.py. Every field's check lives in
fields.py (or directives.py) and raises the message a user sees.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpcops import cadence
from hpcops.spec.fields import (
    GPU_TYPE,
    MAX_ATTEMPTS,
    MAX_BACKOFF_S,
    MAX_CHECKPOINT_S,
    MIN_CHECKPOINT_S,
    NAME,
    QOS,
    ParamValue,
    check_catch_up,
    check_checkpoint_signal,
    check_cron,
    check_data_path,
    check_data_repo,
    check_mem,
    check_param_value,
    check_partition,
    check_repo,
    check_retry_state,
    check_retry_states,
    check_rev,
    check_time,
    check_timezone,
    data_env_name,
    in_range,
    int_as_text,
    optional,
    optional_data_name,
    optional_data_path,
    optional_range,
    optional_rev,
)
from hpcops.specfile import is_repo_url
from hpcops.units import parse_mem_mb, parse_slurm_time

CheckedParamValue = Annotated[ParamValue, BeforeValidator(check_param_value)]
_RetryState = Annotated[str, AfterValidator(check_retry_state)]

MODEL_CONFIG: Final = ConfigDict(extra="forbid", frozen=True, strict=True)


class Resources(BaseModel):
    """What the job asks Slurm for; each field is one #SBATCH directive, as in sbatch(1).

    partition: None means the lab config's default_partition. mem is per node, like --mem
    ("16G", "512M", or a number of megabytes); None leaves Slurm's default. gpus is per node
    (--gres=gpu[:gpu_type]:N). time is a Slurm time limit, 1 minute to 30 days.
    """

    model_config = MODEL_CONFIG

    partition: Annotated[str | None, AfterValidator(check_partition)] = None
    nodes: Annotated[int, AfterValidator(in_range(1, 64, "nodes: 2"))] = 1
    ntasks: Annotated[int, AfterValidator(in_range(1, 1024, "ntasks: 4"))] = 1
    cpus_per_task: Annotated[int, AfterValidator(in_range(1, 256, "cpus_per_task: 8"))] = 1
    mem: Annotated[str | None, BeforeValidator(int_as_text), AfterValidator(check_mem)] = None
    gpus: Annotated[int, AfterValidator(in_range(0, 16, "gpus: 1"))] = 0
    gpu_type: Annotated[str | None, AfterValidator(optional(GPU_TYPE))] = None
    time: Annotated[str, BeforeValidator(int_as_text), AfterValidator(check_time)] = "01:00:00"
    qos: Annotated[str | None, AfterValidator(optional(QOS))] = None

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type_needs_gpus(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("gpus") == 0:
            raise ValueError(
                f"names a GPU type but resources.gpus is 0; ask for GPUs too, e.g. gpus: 1 with "
                f"gpu_type: {value}"
            )
        return value

    @property
    def mem_mb(self) -> int | None:
        return None if self.mem is None else parse_mem_mb(self.mem)

    @property
    def time_limit_s(self) -> int:
        return parse_slurm_time(self.time)

    @property
    def time_limit_min(self) -> int:
        """What sbatch --time gets: Slurm counts whole minutes, so seconds round up."""
        return -(-self.time_limit_s // 60)


class DataTarget(BaseModel):
    """One DVC-tracked file or directory the job reads, staged onto scratch before it starts."""

    model_config = MODEL_CONFIG

    path: Annotated[str, AfterValidator(check_data_path)]
    repo: Annotated[str | None, AfterValidator(check_data_repo)] = None
    rev: Annotated[str | None, AfterValidator(optional_rev)] = None
    dest: Annotated[str | None, AfterValidator(optional_data_path)] = None
    name: Annotated[str | None, AfterValidator(optional_data_name)] = None

    @property
    def env_name(self) -> str:
        return f"HPCOPS_DATA_{self.name or data_env_name(self.path)}"

    @property
    def where(self) -> str:
        return self.dest or self.path


class Code(BaseModel):
    """The run's code: a git repository and the commit to check out into the run's directory."""

    model_config = MODEL_CONFIG

    repo: Annotated[str, AfterValidator(check_repo)]
    commit: Annotated[str, AfterValidator(check_rev)] = "HEAD"

    @property
    def is_url(self) -> bool:
        return is_repo_url(self.repo)


class ScheduleBlock(BaseModel):
    """When `hpcops schedule add SPEC` queues the spec again: a cron expression (crontab's five
    fields, in `timezone`), an interval in seconds, or a change of its DVC-tracked data (checked
    every `check_every_s`). Options given on the command line win over the block. `hpcops
    submit` queues such a spec once and does not schedule it.
    """

    model_config = MODEL_CONFIG

    cron: Annotated[str | None, AfterValidator(check_cron)] = None
    every_s: Annotated[
        int | None, AfterValidator(optional_range(1, cadence.MAX_EVERY_S, "every_s: 3600"))
    ] = None
    timezone: Annotated[str | None, AfterValidator(check_timezone)] = None
    name: Annotated[str | None, AfterValidator(optional(NAME))] = None
    catch_up: Annotated[str | None, AfterValidator(check_catch_up)] = None
    catch_up_grace_s: Annotated[
        int | None, AfterValidator(optional_range(0, 31 * 86400, "catch_up_grace_s: 3600"))
    ] = None
    allow_overlap: bool | None = None
    on_data_change: bool | None = None
    check_every_s: Annotated[
        int | None,
        AfterValidator(optional_range(1, cadence.MAX_EVERY_S, "check_every_s: 300")),
    ] = None

    @model_validator(mode="after")
    def _one_cadence(self) -> ScheduleBlock:
        given = [self.cron is not None, self.every_s is not None, bool(self.on_data_change)]
        if sum(given) != 1:
            raise ValueError(
                "needs exactly one of cron (e.g. cron: '0 3 * * 1'), every_s (e.g. every_s: "
                "3600) and on_data_change: true"
            )
        if self.check_every_s is not None and not self.on_data_change:
            raise ValueError(
                "check_every_s is how often an on_data_change schedule looks at its data; "
                "it needs on_data_change: true"
            )
        return self


# ─── retries and checkpoints ───────────────────────────────────────────────────────────────────


class RetryPolicy(BaseModel):
    """When a run whose job ended early starts a new attempt (a new Slurm job, same run).

    max_attempts counts every attempt of the run, the first included (a spec without retry:
    has 1). on: the job states that start the next attempt, as sacct spells them (FAILED only
    if listed). backoff_s: the least time between an attempt's end and the next one's queueing.
    """

    model_config = MODEL_CONFIG

    max_attempts: Annotated[int, AfterValidator(in_range(1, MAX_ATTEMPTS, "max_attempts: 4"))]
    on: Annotated[list[_RetryState], AfterValidator(check_retry_states)] = [
        "NODE_FAIL",
        "PREEMPTED",
    ]
    backoff_s: Annotated[int, AfterValidator(in_range(0, MAX_BACKOFF_S, "backoff_s: 60"))] = 0


class Checkpoint(BaseModel):
    """The job gets `signal` (USR1 or USR2) `before_s` seconds before its time limit
    (`#SBATCH --signal=B:<signal>@<before_s>`); the script passes it on to the command, which
    saves its state into $HPCOPS_CHECKPOINT_DIR, shared by every attempt of the run."""

    model_config = MODEL_CONFIG

    signal: Annotated[str, AfterValidator(check_checkpoint_signal)] = "USR1"
    before_s: Annotated[
        int, AfterValidator(in_range(MIN_CHECKPOINT_S, MAX_CHECKPOINT_S, "before_s: 300"))
    ]
