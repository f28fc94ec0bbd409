"""The spec's pydantic models: one experiment, what it runs on, its code, data, schedule,
sweep, retries and checkpoint.

Every field's check lives in fields.py (or directives.py) and raises the message a user sees;
messages.py turns what pydantic reports into FieldProblems.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Annotated, Final, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from hpcops import cadence
from hpcops.describe import show
from hpcops.spec.directives import check_extra_directive, check_extra_directives, sets_signal
from hpcops.spec.fields import (
    GPU_TYPE,
    MAX_ATTEMPTS,
    MAX_BACKOFF_S,
    MAX_CHECKPOINT_S,
    MAX_DATA_TARGETS,
    MAX_ENV,
    MAX_PARAMS,
    MAX_SWEEP_PARALLEL,
    MAX_SWEEP_POINTS,
    MAX_SWEEP_SEED,
    MAX_TAGS,
    MIN_CHECKPOINT_S,
    NAME,
    PARAM_KEY,
    QOS,
    RESOURCE_PREFIX,
    TAG_KEY,
    TEMPLATE,
    ParamValue,
    check_catch_up,
    check_checkpoint_signal,
    check_command,
    check_cron,
    check_data_path,
    check_data_repo,
    check_env_key,
    check_env_value,
    check_experiment,
    check_mem,
    check_metric,
    check_param_value,
    check_partition,
    check_repo,
    check_retry_state,
    check_retry_states,
    check_rev,
    check_tag_value,
    check_time,
    check_timezone,
    check_workdir,
    count_text,
    data_env_name,
    distribution_name,
    in_range,
    int_as_text,
    is_repo_url,
    optional,
    optional_data_name,
    optional_data_path,
    optional_range,
    optional_rev,
    scalar_text,
    sweep_key,
)
from hpcops.units import parse_mem_mb, parse_slurm_time

_ParamKey = Annotated[str, AfterValidator(PARAM_KEY.check)]
_ParamVal = Annotated[ParamValue, BeforeValidator(check_param_value)]
_EnvKey = Annotated[str, AfterValidator(check_env_key)]
_EnvVal = Annotated[str, BeforeValidator(scalar_text), AfterValidator(check_env_value)]
_TagKey = Annotated[str, AfterValidator(TAG_KEY.check)]
_TagVal = Annotated[str, BeforeValidator(scalar_text), AfterValidator(check_tag_value)]
_Directive = Annotated[str, AfterValidator(check_extra_directive)]
_RetryState = Annotated[str, AfterValidator(check_retry_state)]

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


# ─── sweeps ────────────────────────────────────────────────────────────────────────────────────

RESOURCE_FIELDS: Final = tuple(Resources.model_fields)
SweepKind = Literal["grid", "list", "random"]

_SweepKey = Annotated[str, AfterValidator(sweep_key(RESOURCE_FIELDS))]


def _same(value: ParamValue) -> tuple[type, ParamValue]:
    """A value as a sweep compares it: 1, 1.0 and true are three values, not one."""
    return (type(value), value)


def _axis(values: list[ParamValue]) -> list[ParamValue]:
    if not values:
        raise ValueError("is empty; give the values to try, e.g. lr: [0.1, 0.01]")
    seen: dict[tuple[type, ParamValue], int] = {}
    for i, value in enumerate(values):
        first = seen.setdefault(_same(value), i)
        if first != i:
            raise ValueError(
                f"[{i}] repeats [{first}] ({value!r}); each value of a grid's list is tried once "
                "with every combination of the others"
            )
    return values


def _grid_fits(value: object) -> object:
    """A grid's size, the product of its lists' lengths, before anything is expanded."""
    if not isinstance(value, dict):
        return value
    lengths = [len(v) for v in value.values() if isinstance(v, list)]
    n = 1
    for length in lengths:
        n = min(n * length, 10**15 + 1)  # a bound, so a thousand axes cost no big integers
    if n > MAX_SWEEP_POINTS:
        product = " × ".join(map(str, lengths)) if len(lengths) <= 12 else "its lists' lengths"
        raise ValueError(
            f"{count_text(n)} points; at most {MAX_SWEEP_POINTS:,} (a grid has {product} "
            "points); split it into smaller sweeps, or draw a sample with random:"
        )
    return value


def _grid_not_empty(value: dict[str, list[ParamValue]] | None) -> object:
    if value is not None and not value:
        raise ValueError(
            "is empty; give at least one parameter and its values, e.g. grid: {lr: [0.1, 0.01]}"
        )
    return value


def _list_fits(value: object) -> object:
    if isinstance(value, list) and len(value) > MAX_SWEEP_POINTS:
        raise ValueError(
            f"{count_text(len(value))} points; at most {MAX_SWEEP_POINTS:,}; split it into "
            "smaller sweeps"
        )
    return value


def _list_not_empty(value: list[dict[str, ParamValue]] | None) -> object:
    if value is not None and not value:
        raise ValueError("is empty; give at least one point, e.g. list: [{lr: 0.1, seed: 1}]")
    return value


def _bounds(name: str, example: str) -> Callable[[list[float] | None], list[float] | None]:
    def check(value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if len(value) != 2:
            raise ValueError(f"needs [low, high], two numbers; got {len(value)}; e.g. {example}")
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"needs finite numbers; got {value!r}; e.g. {example}")
        if name == "randint" and lo > hi:
            raise ValueError(f"needs low <= high (both included); got {value!r}; e.g. {example}")
        if name != "randint" and lo >= hi:
            raise ValueError(f"needs low < high; got {value!r}; e.g. {example}")
        if name == "loguniform" and lo <= 0:
            raise ValueError(f"needs 0 < low < high; got {value!r}; e.g. {example}")
        return value

    return check


def _choices(value: list[ParamValue] | None) -> list[ParamValue] | None:
    if value is not None and not value:
        raise ValueError("is empty; give the values to choose from, e.g. choice: [18, 34]")
    if value is not None and len(value) > MAX_SWEEP_POINTS:
        raise ValueError(f"has {len(value):,} values; at most {MAX_SWEEP_POINTS:,}")
    return value


class Distribution(BaseModel):
    """Where a random sweep draws one key's values from; exactly one of the four is given.

    uniform [lo, hi]: a float, lo <= x <= hi. loguniform [lo, hi] (0 < lo < hi): a float whose
    logarithm is uniform. randint [lo, hi]: an integer, both ends included. choice: one of the
    values, each as likely.
    """

    model_config = _MODEL_CONFIG

    uniform: Annotated[list[float] | None, AfterValidator(_bounds("uniform", "[0.0, 0.5]"))] = None
    loguniform: Annotated[
        list[float] | None, AfterValidator(_bounds("loguniform", "[1.0e-4, 1.0e-1]"))
    ] = None
    randint: Annotated[list[int] | None, AfterValidator(_bounds("randint", "[1, 8]"))] = None
    choice: Annotated[list[_ParamVal] | None, AfterValidator(_choices)] = None

    @property
    def name(self) -> str:
        return next(n for n in type(self).model_fields if getattr(self, n) is not None)

    @property
    def args(self) -> list[ParamValue]:
        values: list[ParamValue] = getattr(self, self.name)
        return values

    def plain(self) -> dict[str, list[ParamValue]]:
        return {self.name: list(self.args)}


_Distribution = Annotated[Distribution, BeforeValidator(distribution_name)]


def _space_not_empty(value: dict[str, Distribution]) -> dict[str, Distribution]:
    if not value:
        raise ValueError(
            "is empty; give each key its distribution, e.g. space: {lr: {loguniform: "
            "[1.0e-4, 1.0e-1]}}"
        )
    return value


class RandomSweep(BaseModel):
    """`samples` points drawn from `space` with random.Random(seed); a sweep queued without a
    seed gets one at submission (pin_sweep_seed), and the seed is recorded with it."""

    model_config = _MODEL_CONFIG

    samples: Annotated[int, AfterValidator(in_range(1, MAX_SWEEP_POINTS, "samples: 50"))]
    seed: Annotated[int | None, AfterValidator(optional_range(0, MAX_SWEEP_SEED, "seed: 0"))] = None
    space: Annotated[dict[_SweepKey, _Distribution], AfterValidator(_space_not_empty)]


class SweepObjective(BaseModel):
    """The MLflow metric that ranks a sweep's points (its last value), and which way is better."""

    model_config = _MODEL_CONFIG

    metric: Annotated[str, AfterValidator(check_metric)]
    mode: Literal["max", "min"]


class SweepDef(BaseModel):
    """A sweep: one spec run at many points, each point a set of values for some keys.

    Exactly one of `grid` (key -> list of values: the cartesian product, in the keys' order,
    the last key varying fastest), `list` (`points` here: the points themselves) and `random`
    (samples drawn from distributions). A key is a parameter name (the point's value overrides
    `params`) or `resources.<field>` (it overrides that resource). Values are scalars.

    A sweep has at most MAX_SWEEP_POINTS (10,000) points; a grid's count, the product of its
    lists' lengths, is checked before anything is expanded. `objective` ranks the points;
    `max_parallel` bounds how many of them run at once.
    """

    model_config = _MODEL_CONFIG

    grid: Annotated[
        dict[_SweepKey, Annotated[list[_ParamVal], AfterValidator(_axis)]] | None,
        BeforeValidator(_grid_fits),
        AfterValidator(_grid_not_empty),
    ] = None
    points: Annotated[
        list[dict[_SweepKey, _ParamVal]] | None,
        BeforeValidator(_list_fits),
        AfterValidator(_list_not_empty),
    ] = Field(default=None, alias="list")
    random: RandomSweep | None = None
    objective: SweepObjective | None = None
    max_parallel: Annotated[
        int | None, AfterValidator(optional_range(1, MAX_SWEEP_PARALLEL, "max_parallel: 4"))
    ] = None

    @model_validator(mode="after")
    def _one_kind(self) -> SweepDef:
        given = [n for n in ("grid", "points", "random") if getattr(self, n) is not None]
        if len(given) == 1:
            return self
        nulls = [self._key(n) for n in ("grid", "points", "random") if n in self.model_fields_set]
        nulls = [n for n in nulls if n not in map(self._key, given)]
        why = f" ({', '.join(nulls)} empty (null))" if nulls and not given else ""
        raise ValueError(
            f"needs exactly one of grid, list and random{why}; e.g. grid: {{lr: [0.1, 0.01], "
            "seed: [1, 2]}"
        )

    @staticmethod
    def _key(name: str) -> str:
        return "list" if name == "points" else name

    @property
    def kind(self) -> SweepKind:
        if self.grid is not None:
            return "grid"
        return "list" if self.points is not None else "random"

    @property
    def keys(self) -> list[str]:
        """Every key the sweep sets, in the order it first names them."""
        if self.grid is not None:
            return list(self.grid)
        if self.random is not None:
            return list(self.random.space)
        return list(dict.fromkeys(k for point in self.points or [] for k in point))

    @property
    def n_points(self) -> int:
        if self.grid is not None:
            return math.prod(len(values) for values in self.grid.values())
        if self.random is not None:
            return self.random.samples
        return len(self.points or [])

    def plain(self) -> dict[str, object]:
        """The sweep block as a spec file spells it (`list`, one name per distribution)."""
        data: dict[str, object] = {}
        if self.grid is not None:
            data["grid"] = {k: list(v) for k, v in self.grid.items()}
        if self.points is not None:
            data["list"] = [dict(point) for point in self.points]
        if self.random is not None:
            drawn: dict[str, object] = {"samples": self.random.samples}
            if self.random.seed is not None:
                drawn["seed"] = self.random.seed
            drawn["space"] = {k: d.plain() for k, d in self.random.space.items()}
            data["random"] = drawn
        if self.objective is not None:
            data["objective"] = self.objective.model_dump()
        if self.max_parallel is not None:
            data["max_parallel"] = self.max_parallel
        return data


# ─── retries and checkpoints ───────────────────────────────────────────────────────────────────


class RetryPolicy(BaseModel):
    """When a run whose job ended early starts a new attempt (a new Slurm job, same run).

    max_attempts counts every attempt of the run, the first included (a spec without retry:
    has 1). on: the job states that start the next attempt, as sacct spells them (FAILED only
    if listed). backoff_s: the least time between an attempt's end and the next one's queueing.
    """

    model_config = _MODEL_CONFIG

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

    model_config = _MODEL_CONFIG

    signal: Annotated[str, AfterValidator(check_checkpoint_signal)] = "USR1"
    before_s: Annotated[
        int, AfterValidator(in_range(MIN_CHECKPOINT_S, MAX_CHECKPOINT_S, "before_s: 300"))
    ]


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
