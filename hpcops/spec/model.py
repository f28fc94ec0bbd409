"""The spec's pydantic models: one experiment, what it runs on, its code, data and schedule.

Every field's check lives in fields.py (or directives.py) and raises the message a user sees;
messages.py turns what pydantic reports into FieldProblems.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

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
from hpcops.describe import show
from hpcops.spec.directives import check_extra_directive, check_extra_directives
from hpcops.spec.fields import (
    GPU_TYPE,
    MAX_DATA_TARGETS,
    MAX_ENV,
    MAX_PARAMS,
    MAX_TAGS,
    NAME,
    PARAM_KEY,
    QOS,
    TAG_KEY,
    TEMPLATE,
    ParamValue,
    check_catch_up,
    check_command,
    check_cron,
    check_data_path,
    check_data_repo,
    check_env_key,
    check_env_value,
    check_experiment,
    check_mem,
    check_param_value,
    check_partition,
    check_repo,
    check_rev,
    check_tag_value,
    check_time,
    check_timezone,
    check_workdir,
    data_env_name,
    in_range,
    int_as_text,
    is_repo_url,
    optional,
    optional_data_name,
    optional_data_path,
    optional_range,
    optional_rev,
    scalar_text,
)
from hpcops.units import parse_mem_mb, parse_slurm_time

_ParamKey = Annotated[str, AfterValidator(PARAM_KEY.check)]
_ParamVal = Annotated[ParamValue, BeforeValidator(check_param_value)]
_EnvKey = Annotated[str, AfterValidator(check_env_key)]
_EnvVal = Annotated[str, BeforeValidator(scalar_text), AfterValidator(check_env_value)]
_TagKey = Annotated[str, AfterValidator(TAG_KEY.check)]
_TagVal = Annotated[str, BeforeValidator(scalar_text), AfterValidator(check_tag_value)]
_Directive = Annotated[str, AfterValidator(check_extra_directive)]

_MODEL_CONFIG: Final = ConfigDict(extra="forbid", frozen=True, strict=True)


class Resources(BaseModel):
    """What the job asks Slurm for; each field is one #SBATCH directive, as in sbatch(1).

    partition: None means the lab config's default_partition. mem is per node, like --mem
    ("16G", "512M", or a number of megabytes); None leaves Slurm's default. gpus is per node
    (--gres=gpu[:gpu_type]:N). time is a Slurm time limit, 1 minute to 30 days.
    """

    model_config = _MODEL_CONFIG

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

    model_config = _MODEL_CONFIG

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

    model_config = _MODEL_CONFIG

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

    model_config = _MODEL_CONFIG

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


class Spec(BaseModel):
    """One experiment: what to run, with which parameters, on what resources."""

    model_config = _MODEL_CONFIG

    name: Annotated[str, AfterValidator(NAME.check)]
    experiment: Annotated[str, AfterValidator(check_experiment)]
    command: Annotated[str, AfterValidator(check_command)]
    code: Code | None = None
    workdir: Annotated[str | None, AfterValidator(check_workdir)] = None
    data: list[DataTarget] = []
    staging: Literal["job", "inline"] | None = None
    params: dict[_ParamKey, _ParamVal] = {}
    env: dict[_EnvKey, _EnvVal] = {}
    resources: Resources = Resources()
    priority: Annotated[int, AfterValidator(in_range(-1000, 1000, "priority: 10"))] = 0
    template: Annotated[str, AfterValidator(TEMPLATE.check)] = "default"
    extra_directives: Annotated[list[_Directive], AfterValidator(check_extra_directives)] = []
    tags: dict[_TagKey, _TagVal] = {}
    schedule: ScheduleBlock | None = None

    @field_validator("params")
    @classmethod
    def _params_fit_the_environment(cls, value: dict[str, ParamValue]) -> dict[str, ParamValue]:
        if len(value) > MAX_PARAMS:
            raise ValueError(f"has {len(value)} entries; at most {MAX_PARAMS}")
        seen: dict[str, str] = {}
        for key in value:
            upper = key.upper()
            if upper in seen:
                raise ValueError(
                    f"'{seen[upper]}' and '{key}' would both become the environment variable "
                    f"HPCOPS_PARAM_{upper}; rename one"
                )
            seen[upper] = key
        return value

    @field_validator("workdir")
    @classmethod
    def _relative_only_in_checkout(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Only when code is known to be absent: an invalid code block has its own message.
        no_code = "code" in info.data and info.data["code"] is None
        if value is not None and not value.startswith("/") and no_code:
            raise ValueError(
                f"must be an absolute path such as /home/ana/mnist; got {show(value)} (a "
                "relative workdir is a folder of the checkout when the spec has code:, or is "
                "resolved against the spec file's folder when hpcops reads the file itself)"
            )
        return value

    @field_validator("data")
    @classmethod
    def _data_fits(cls, value: list[DataTarget], info: ValidationInfo) -> list[DataTarget]:
        if len(value) > MAX_DATA_TARGETS:
            raise ValueError(f"has {len(value)} targets; at most {MAX_DATA_TARGETS}")
        no_code = "code" in info.data and info.data["code"] is None
        names: dict[str, int] = {}
        places: dict[str, int] = {}
        for i, target in enumerate(value):
            if target.repo is None and no_code:
                raise ValueError(
                    f"[{i}] needs a repo: the spec has no code: whose repository it could come from"
                )
            if target.rev is not None and target.repo is None:
                raise ValueError(
                    f"[{i}].rev: data in the run's own repository is read at the run's commit; "
                    "a rev goes with a repo URL"
                )
            for seen, key, what in (
                (names, target.env_name, "variable"),
                (places, target.where, "dest"),
            ):
                if key in seen:
                    raise ValueError(
                        f"[{seen[key]}] and [{i}] have the same {what} {key}; give one a "
                        f"{'name' if what == 'variable' else 'dest'}"
                    )
                seen[key] = i
        return value

    @field_validator("env")
    @classmethod
    def _env_size(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENV:
            raise ValueError(f"has {len(value)} entries; at most {MAX_ENV}")
        return value

    @field_validator("tags")
    @classmethod
    def _tags_size(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_TAGS:
            raise ValueError(f"has {len(value)} entries; at most {MAX_TAGS}")
        return value
