"""What each API method accepts: typed request models, checked before a handler acts.

A request's `params` are untrusted JSON from any lab member (or `hpcops api` over SSH). Each
method's model says which keys it takes, their types and ranges; everything is strict (no "5"
for 5, no true for 1, no NaN) and a key no model names is refused rather than ignored, so a
misspelt `dry_run` cannot turn a dry run into a real one.

A refusal is an `InvalidInput` whose message names the field and what it allows. Each field
carries that sentence (`Says`), so the message does not depend on pydantic's wording:

    {"run": "1; DROP TABLE run"}  ->  a run id is a positive integer, not '1; DROP TABLE run'

Where a request names a run it may often name a sweep or a pipeline instead: `"run": "s7"` is
sweep 7 (`SweepId`), `"run": "p3"` pipeline 3 (`PipelineId`); run ids stay integers. There the
refusal names every form:

    {"run": "x"}  ->  params.run must be a run id (a positive integer), a sweep id (s and a
                      positive integer, e.g. s7) or a pipeline id (p and a positive integer,
                      e.g. p3), not 'x'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hpcops.api.refusals import Says, refusal, shown
from hpcops.code.mirror import BUNDLE_NAME_RE, MAX_HAVE_QUERY, Shipment
from hpcops.errors import InvalidInput
from hpcops.spec import FULL_COMMIT_RE
from hpcops.states import RunState

MAX_SPECS_PER_SUBMIT = 1000
MAX_LIST = 100_000
MAX_AUDIT = 10_000
MAX_QUOTA = 10_000_000
MAX_ID = 2**63 - 1  # SQLite's largest integer


def _refused(message: str) -> PydanticCustomError:
    """A refusal worded in full by a validator; it wins over the field's `Says`."""
    return PydanticCustomError("hpcops", message)


class Params(BaseModel):
    """Base of every request model: strict, closed, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> Self:
        """The request's params as this model, or InvalidInput naming the first bad field.
        An unknown key is named first: a misspelt `rnu` is better told as such than as a
        missing `run`."""
        try:
            return cls.model_validate(params)
        except ValidationError as exc:
            errors = exc.errors()
            unknown = [e for e in errors if e["type"] == "extra_forbidden"]
            raise InvalidInput(refusal(cls, (unknown or errors)[0])) from None


# --- field types ---------------------------------------------------------------------------

SWEEP_ID_RE = re.compile(r"[sS]([1-9][0-9]{0,18})")


@dataclass(frozen=True)
class SweepId:
    """A sweep named where a run could be: `s7` on the wire and the command line."""

    number: int

    def __str__(self) -> str:
        return f"s{self.number}"


def _number(pattern: re.Pattern[str], value: str) -> int | None:
    """The number of `s7` or `p3` (either case) for its pattern; None for anything else, an
    id over MAX_ID too."""
    found = pattern.fullmatch(value)
    if found is None or int(found.group(1)) > MAX_ID:
        return None
    return int(found.group(1))


def sweep_id(value: str) -> SweepId | None:
    """`s7` (or `S7`) as a SweepId; None for anything else."""
    number = _number(SWEEP_ID_RE, value)
    return None if number is None else SweepId(number)


PIPELINE_ID_RE = re.compile(r"[pP]([1-9][0-9]{0,18})")


@dataclass(frozen=True)
class PipelineId:
    """A pipeline named where a run could be: `p3` on the wire and the command line."""

    number: int

    def __str__(self) -> str:
        return f"p{self.number}"


def pipeline_id(value: str) -> PipelineId | None:
    """`p3` (or `P3`) as a PipelineId; None for anything else."""
    number = _number(PIPELINE_ID_RE, value)
    return None if number is None else PipelineId(number)


_PIPELINE = "a pipeline id (p and a positive integer, e.g. p3)"
_RUN_OR_SWEEP = (
    f"a run id (a positive integer), a sweep id (s and a positive integer, e.g. s7) or {_PIPELINE}"
)


def _run_or_sweep(value: Any) -> int | SweepId | PipelineId:
    """A run id, a sweep's `s<N>` or a pipeline's `p<N>`: the target of show, cancel, hold,
    release, priority, top."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _refused(f"a run id is a positive integer, not {value}")
        if value > MAX_ID:
            raise _refused(f"a run id is at most {MAX_ID}, not {value}")
        return value
    found = (sweep_id(value) or pipeline_id(value)) if isinstance(value, str) else None
    if found is None:
        raise _refused(f"params.run must be {_RUN_OR_SWEEP}, not {shown(value)}")
    return found


def _pipeline_ref(value: Any) -> PipelineId:
    found = pipeline_id(value) if isinstance(value, str) else None
    if found is None:
        raise _refused(f"params.pipeline must be {_PIPELINE}, not {shown(value)}")
    return found


def _run_ref(value: Any) -> int | str | SweepId:
    """rerun's source: an hpcops run id, a sweep id (`s7`), or an MLflow run id (32 hex digits,
    checked by the engine; none starts with an s)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _refused(
            f"params.run must be a run id, a sweep id (s7) or an MLflow run id, not {shown(value)}"
        )
    if isinstance(value, int) and value < 1:
        raise _refused(f"a run id is a positive integer, not {value}")
    if isinstance(value, int) and value > MAX_ID:
        raise _refused(f"a run id is at most {MAX_ID}, not {value}")
    if isinstance(value, str) and pipeline_id(value) is not None:
        raise _refused(
            f"a pipeline is rerun step by step: `hpcops rerun {value}.STEP` (params.pipeline "
            "and params.step of rerun_step), not params.run"
        )
    if isinstance(value, str) and value[:1] in ("s", "S"):
        found = sweep_id(value)
        if found is None:
            raise _refused(f"a sweep id is s and a positive integer (e.g. s7), not {shown(value)}")
        return found
    return value


def _schedule_ref(value: Any) -> int | str:
    """A schedule named by its id (a positive integer, or its digits) or by its name."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    if isinstance(value, str) and 1 <= len(value) <= 64:
        return value
    raise ValueError("not a schedule")


def _state(value: Any) -> Any:
    """State names are case-insensitive: `running` is RUNNING."""
    try:
        return RunState(value.upper()) if isinstance(value, str) else value
    except ValueError:
        raise ValueError("not a state") from None


def _match(pattern: re.Pattern[str]) -> AfterValidator:
    def check(value: str | None) -> str | None:
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(f"does not match {pattern.pattern}")
        return value

    return AfterValidator(check)


def _at_most(limit: int, message: str) -> BeforeValidator:
    """A list's length, checked before its items: a huge request is refused cheaply."""

    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            raise _refused(message)
        return value

    return BeforeValidator(check)


def _an_id(what: str) -> AfterValidator:
    """Ids are SQLite integers: a larger one is refused here, not by the database's driver."""

    def check(value: int | str) -> int | str:
        if isinstance(value, int) and value > MAX_ID:
            raise _refused(f"{what} is at most {MAX_ID}, not {value}")
        return value

    return AfterValidator(check)


RunId = Annotated[
    int, Field(ge=1), _an_id("a run id"), Says("a run id is a positive integer, not {value!r}")
]
RunOrSweep = Annotated[
    int | SweepId | PipelineId,
    PlainValidator(_run_or_sweep),
    Says(f"params.run must be {_RUN_OR_SWEEP}, not {{value!r}}"),
]
PipelineRef = Annotated[PipelineId, PlainValidator(_pipeline_ref)]
ScheduleRef = Annotated[
    int | str,
    PlainValidator(_schedule_ref),
    _an_id("a schedule id"),
    Says("a schedule is named by its id or its name, not {value!r}"),
]
Text = Annotated[str, Says("params.{path} must be a string")]
StateName = Annotated[
    RunState,
    BeforeValidator(_state),
    Says(f"unknown state {{value!r}}; states are: {', '.join(s.value for s in RunState)}"),
]
FullCommit = Annotated[str, _match(FULL_COMMIT_RE)]
# Quota scopes name users and partitions as Unix and Slurm spell them.
QUOTA_SCOPE_RE = re.compile(
    r"lab|per_user|user:[a-z_][a-z0-9_.-]{0,31}|partition:[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
)


def _limit(high: int) -> Says:
    return Says(f"params.{{path}} must be an integer from 1 to {high}")


def _option(kind: str) -> Says:
    return Says(f"params.{{path}} must be {kind}, not {{value!r}}")


# --- reading -------------------------------------------------------------------------------


class NoParams(Params):
    """quota_show, cache_ls (ping takes whatever it is sent: it is how a client of any
    version finds out which protocol the daemon speaks)."""


class RunParams(Params):
    """why, history: one run."""

    run: RunId


class TargetParams(Params):
    """show, cancel, hold, release, top, retry: a run, a sweep (`"s7"`) or a pipeline
    (`"p3"`)."""

    run: RunOrSweep


class ListParams(Params):
    states: Annotated[
        list[StateName] | None, Says("params.states must be a list of state names")
    ] = None
    limit: Annotated[int | None, Field(ge=1, le=MAX_LIST), _limit(MAX_LIST)] = None
    # true: a sweep's points are one row for the sweep, a pipeline's runs one row for the
    # pipeline (`hpcops ls`); false: every run a row.
    sweeps: Annotated[bool, Says("params.sweeps must be true or false")] = False


class LogsParams(Params):
    run: RunId
    stream: Annotated[
        Literal["stdout", "stderr", "staging"],
        Says("params.stream must be 'stdout', 'stderr' or 'staging'"),
    ] = "stdout"
    # A negative offset asks for the last -offset bytes; max_bytes is clamped, not refused.
    offset: Annotated[int, Says("params.offset and params.max_bytes must be integers")] = 0
    max_bytes: Annotated[int, Says("params.offset and params.max_bytes must be integers")] = 65536


class AuditParams(Params):
    limit: Annotated[int, Field(ge=1, le=MAX_AUDIT), _limit(MAX_AUDIT)] = 200


# --- the queue -----------------------------------------------------------------------------


class CodeParams(Params):
    """A spec's `code` in a submit: what the submitter's client did about its code."""

    bundle: Annotated[
        str | None,
        _match(BUNDLE_NAME_RE),
        Says("params.specs[].code.bundle: {value!r} is not a bundle name"),
    ] = None
    checkout: Annotated[
        str | None,
        _match(FULL_COMMIT_RE),
        Says("params.specs[].code.checkout: {value!r} is not a full commit id"),
    ] = None
    dirty: Annotated[bool, Says("params.specs[].code.dirty must be true or false")] = False

    def shipment(self) -> Shipment:
        return Shipment(bundle=self.bundle, checkout=self.checkout, dirty=self.dirty)


# A spec file's folder on the caller's machine: absolute, no control characters. It only
# anchors the spec's relative paths, which the spec's own checks then judge like any other.
BASE_DIR_RE = re.compile(r"/(?:[^\x00-\x1f\x7f/]+/?)*")
MAX_BASE_DIR = 4096


def _base_dir(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_BASE_DIR or not BASE_DIR_RE.fullmatch(value):
        raise _refused(
            f"base_dir must be an absolute folder (at most {MAX_BASE_DIR} characters, no "
            "control characters)"
        )
    return value


BaseDir = Annotated[
    str | None,
    PlainValidator(_base_dir),
    Says("params.{path} must be an absolute folder"),
]


class SpecItem(Params):
    """One spec: `yaml` is its text. With `base_dir`, the text is the file as it is (the fast
    entry's submit, `cli/fast.py`): relative paths are anchored here, against `base_dir`, and a
    spec with code: or schedule: is refused, for the CLI's full path to pin, ship or mention it.
    Without, the client's full path sent the spec it read (anchored, canonical YAML)."""

    yaml: Text
    source: Text
    base_dir: BaseDir = None
    code: Annotated[
        CodeParams | None,
        Says("params.specs[].code must be an object with bundle, checkout, dirty"),
    ] = None


class SubmitParams(Params):
    specs: Annotated[
        list[Annotated[SpecItem, Says("params.{path} must be an object with yaml and source")]],
        Field(min_length=1),
        _at_most(MAX_SPECS_PER_SUBMIT, f"at most {MAX_SPECS_PER_SUBMIT} specs per request"),
        Says("params.specs must be a non-empty list of {yaml, source}"),
    ]


class ValidateParams(Params):
    """A spec to check: as SpecItem's `yaml`, `source` and `base_dir` (nothing is refused for
    needing the full path: validating it is all the same)."""

    yaml: Text
    source: Text
    base_dir: BaseDir = None


class SubmitPipelineParams(Params):
    """A pipeline as `pipeline_to_wire` sends it (checked again by `pipeline_from_wire`), and
    per spec step what the submitter's client did about its code."""

    pipeline: Annotated[
        dict[str, Any], Says("params.pipeline must be an object with source, definition, specs")
    ]
    code: Annotated[
        dict[str, CodeParams],
        Says("params.code must map step names to objects with bundle, checkout, dirty"),
    ] = Field(default_factory=dict)


class RerunStepParams(Params):
    """`hpcops rerun p3.train [--downstream]`."""

    pipeline: PipelineRef
    step: Annotated[
        str, Field(min_length=1, max_length=256), Says("params.step must be a step's name")
    ]
    downstream: Annotated[bool, Says("params.downstream must be true or false")] = False


class PriorityParams(Params):
    # The range depends on the caller's role: access.check_priority says it.
    priority: Annotated[int, Says("a priority is an integer, not {value!r}")]
    run: RunOrSweep


class RerunParams(Params):
    run: Annotated[int | str | SweepId, PlainValidator(_run_ref)]
    # `--set` overrides: {"params.lr": "0.01"}; which keys a rerun may set, hpcops.tracking says.
    overrides: Annotated[
        dict[str, str], Says('params.set must map keys to text, e.g. {"params.lr": "0.01"}')
    ] = Field(default_factory=dict, alias="set")


# --- code and data -------------------------------------------------------------------------


class CodeHaveParams(Params):
    commits: Annotated[
        list[FullCommit],
        Field(max_length=MAX_HAVE_QUERY),
        Says(f"params.commits must be a list of at most {MAX_HAVE_QUERY} full commit ids"),
    ]


class CacheGcParams(Params):
    older_than_s: Annotated[
        float | None, Field(ge=0), Says("params.older_than_s must be a non-negative number or null")
    ] = None
    max_bytes: Annotated[
        float | None, Field(ge=0), Says("params.max_bytes must be a non-negative number or null")
    ] = None
    dry_run: Annotated[bool, Says("params.dry_run must be true or false")] = False

    @model_validator(mode="after")
    def _something_to_remove(self) -> Self:
        if self.older_than_s is None and self.max_bytes is None:
            raise _refused("say what to remove: --older-than, --max-size, or both")
        return self

    @property
    def max_size(self) -> int | None:
        """max_bytes in whole bytes (a cache's size is whole: floor keeps the same plan)."""
        return None if self.max_bytes is None else math.floor(self.max_bytes)


# --- quotas --------------------------------------------------------------------------------


class QuotaSetParams(Params):
    scope: Annotated[
        str,
        _match(QUOTA_SCOPE_RE),
        Says("quota scope {value!r} is not one of: lab, per_user, user:NAME, partition:NAME"),
    ]
    resource: Annotated[
        Literal["jobs", "cpus", "gpus"],
        Says("quota resource {value!r} is not one of: jobs, cpus, gpus"),
    ]
    # null (or no value) is unlimited: the config's limit no longer applies.
    value: Annotated[
        int | None,
        Field(ge=0, le=MAX_QUOTA),
        Says(
            f"a quota is a whole number from 0 to {MAX_QUOTA}, or null for unlimited; not "
            "{value!r}"
        ),
    ] = None


# --- schedules -----------------------------------------------------------------------------


class ScheduleAddParams(Params):
    """The spec (`yaml`) or the pipeline (`pipeline`: hpcops.pipeline.pipeline_to_wire's form,
    checked again by the daemon) and the options of `hpcops schedule add`; ranges and
    combinations are the schedule service's to check (it words them as the CLI's options)."""

    yaml: Annotated[str | None, Says("params.{path} must be a string")] = None
    pipeline: Annotated[
        dict[str, Any] | None,
        Says("params.pipeline must be an object: {source, definition, specs}"),
    ] = None
    source: Text
    name: Annotated[str | None, _option("str")] = None
    cron: Annotated[str | None, _option("str")] = None
    every_s: Annotated[int | None, _option("int")] = None
    timezone: Annotated[str | None, _option("str")] = None
    catch_up: Annotated[str | None, _option("str")] = None
    catch_up_grace_s: Annotated[int | None, _option("int")] = None
    allow_overlap: Annotated[bool | None, _option("bool")] = None
    on_data_change: Annotated[bool | None, _option("bool")] = None
    check_every_s: Annotated[int | None, _option("int")] = None

    @model_validator(mode="after")
    def _one_thing_to_schedule(self) -> Self:
        if (self.yaml is None) == (self.pipeline is None):
            raise _refused("give exactly one of params.yaml (a spec) and params.pipeline")
        return self


class ScheduleListParams(Params):
    include_removed: Annotated[bool, Says("params.all must be true or false")] = Field(
        False, alias="all"
    )


class ScheduleParams(Params):
    """schedule_pause, schedule_resume, schedule_remove, schedule_run_now."""

    schedule: ScheduleRef


class ScheduleShowParams(Params):
    schedule: ScheduleRef
    limit: Annotated[int, Field(ge=1, le=MAX_AUDIT), _limit(MAX_AUDIT)] = 20
