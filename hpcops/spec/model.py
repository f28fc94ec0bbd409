"""The spec's pydantic model: one experiment, what it runs on, its code, data, schedule, sweep,
retries and checkpoint (the blocks are in blocks.py, the sweep's in sweepdef.py).

Every field's check lives in fields.py (or directives.py) and raises the message a user sees;
messages.py turns what pydantic reports into FieldProblems.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from hpcops.describe import show
from hpcops.spec.blocks import (
    MODEL_CONFIG,
    CheckedParamValue,
    Checkpoint,
    Code,
    DataTarget,
    Resources,
    RetryPolicy,
    ScheduleBlock,
)
from hpcops.spec.directives import check_extra_directive, check_extra_directives, sets_signal
from hpcops.spec.fields import (
    MAX_DATA_TARGETS,
    MAX_ENV,
    MAX_PARAMS,
    MAX_TAGS,
    MIN_CHECKPOINT_S,
    NAME,
    PARAM_KEY,
    RESOURCE_PREFIX,
    TAG_KEY,
    TEMPLATE,
    ParamValue,
    check_command,
    check_env_key,
    check_env_value,
    check_experiment,
    check_tag_value,
    check_workdir,
    in_range,
    scalar_text,
)
from hpcops.spec.sweepdef import SweepDef

_ParamKey = Annotated[str, AfterValidator(PARAM_KEY.check)]
_EnvKey = Annotated[str, AfterValidator(check_env_key)]
_EnvVal = Annotated[str, BeforeValidator(scalar_text), AfterValidator(check_env_value)]
_TagKey = Annotated[str, AfterValidator(TAG_KEY.check)]
_TagVal = Annotated[str, BeforeValidator(scalar_text), AfterValidator(check_tag_value)]
_Directive = Annotated[str, AfterValidator(check_extra_directive)]


def _refuse(loc: tuple[str | int, ...], value: object, message: str) -> NoReturn:
    """A problem a check across fields finds, placed at the field it is about (pydantic
    prefixes `loc` with the place of the model being validated)."""
    error = PydanticCustomError("value_error", "{error}", {"error": message})
    raise ValidationError.from_exception_data(
        "Spec", [InitErrorDetails(type=error, loc=loc, input=value)]
    )


def _env_collision(keys: Iterable[str]) -> str | None:
    seen: dict[str, str] = {}
    for key in keys:
        upper = key.upper()
        if upper in seen:
            return (
                f"'{seen[upper]}' and '{key}' would both become the environment variable "
                f"HPCOPS_PARAM_{upper}; rename one"
            )
        seen[upper] = key
    return None


class Spec(BaseModel):
    """One experiment: what to run, with which parameters, on what resources."""

    model_config = MODEL_CONFIG

    name: Annotated[str, AfterValidator(NAME.check)]
    experiment: Annotated[str, AfterValidator(check_experiment)]
    command: Annotated[str, AfterValidator(check_command)]
    code: Code | None = None
    workdir: Annotated[str | None, AfterValidator(check_workdir)] = None
    data: list[DataTarget] = []
    staging: Literal["job", "inline"] | None = None
    params: dict[_ParamKey, CheckedParamValue] = {}
    env: dict[_EnvKey, _EnvVal] = {}
    resources: Resources = Resources()
    priority: Annotated[int, AfterValidator(in_range(-1000, 1000, "priority: 10"))] = 0
    template: Annotated[str, AfterValidator(TEMPLATE.check)] = "default"
    extra_directives: Annotated[list[_Directive], AfterValidator(check_extra_directives)] = []
    tags: dict[_TagKey, _TagVal] = {}
    schedule: ScheduleBlock | None = None
    sweep: SweepDef | None = None
    retry: RetryPolicy | None = None
    checkpoint: Checkpoint | None = None

    @field_validator("params")
    @classmethod
    def _params_fit_the_environment(cls, value: dict[str, ParamValue]) -> dict[str, ParamValue]:
        if len(value) > MAX_PARAMS:
            raise ValueError(f"has {len(value)} entries; at most {MAX_PARAMS}")
        collision = _env_collision(value)
        if collision:
            raise ValueError(collision)
        return value

    @field_validator("sweep")
    @classmethod
    def _sweep_fits(cls, value: SweepDef | None, info: ValidationInfo) -> SweepDef | None:
        if value is None:
            return None
        if info.data.get("schedule") is not None:
            raise ValueError(
                "a spec cannot have both sweep: and schedule: yet (scheduled sweeps come with "
                "pipelines); remove schedule: to submit the sweep with hpcops submit"
            )
        params = info.data.get("params")
        if params is None:  # params are invalid: they have their own message
            return value
        swept = [k for k in value.keys if not k.startswith(RESOURCE_PREFIX)]
        names = list(dict.fromkeys([*params, *swept]))
        if len(names) > MAX_PARAMS:
            raise ValueError(
                f"the spec's params and the sweep's keys make {len(names)} parameters; at most "
                f"{MAX_PARAMS}"
            )
        collision = _env_collision(names)
        if collision:
            raise ValueError(collision)
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

    @model_validator(mode="after")
    def _checkpoint_fits(self) -> Spec:
        checkpoint = self.checkpoint
        if checkpoint is None:
            return self
        for i, item in enumerate(self.extra_directives):
            if sets_signal(item):
                _refuse(
                    ("extra_directives", i),
                    item,
                    f"{item} would fight checkpoint:, which sets --signal=B:"
                    f"{checkpoint.signal}@{checkpoint.before_s} itself; remove one of the two",
                )
        swept = self.sweep is not None and f"{RESOURCE_PREFIX}time" in self.sweep.keys
        limit = self.resources.time_limit_s
        # A sweep that sets the time has each point checked with its own (check_sweep_points).
        if not swept and checkpoint.before_s >= limit:
            _refuse(
                ("checkpoint", "before_s"),
                checkpoint.before_s,
                f"must be less than the run's time limit, resources.time "
                f"{show(self.resources.time)} ({limit} s); got {checkpoint.before_s}. The job "
                "gets the signal before_s seconds before its limit (Slurm may send it up to a "
                f"minute earlier); e.g. before_s: {max(MIN_CHECKPOINT_S, min(300, limit // 4))}",
            )
        return self
