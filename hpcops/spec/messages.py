"""pydantic's errors in our words: each becomes a FieldProblem at a dotted location, with a
message that says what was expected, what was given and, where one helps, a valid example.
"""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from hpcops.describe import describe_value
from hpcops.errors import FieldProblem, SpecError
from hpcops.names import closest
from hpcops.spec.blocks import Checkpoint, Code, DataTarget, Resources, RetryPolicy, ScheduleBlock
from hpcops.spec.model import Spec
from hpcops.spec.sweepdef import Distribution, RandomSweep, SweepDef, SweepObjective
from hpcops.yamlio import MAX_PROBLEMS, dotted

MINIMAL_SPEC: Final = "name: mnist-baseline\nexperiment: mnist\ncommand: python train.py\n"

_DICT_FIELDS: Final = frozenset({"params", "env", "tags"})
_EXAMPLES: Final = {
    "name": "name: mnist-baseline",
    "experiment": "experiment: mnist",
    "command": "command: python train.py --epochs 10",
    "workdir": "workdir: /home/ana/mnist",
    "code": "code: {repo: ., commit: HEAD}",
    "code.repo": "repo: /home/ana/mnist",
    "code.commit": "commit: main",
    "data": "data: [{path: data/mnist}]",
    "data.*": "- {path: data/mnist, dest: data/mnist}",
    "data.*.path": "path: data/mnist",
    "data.*.repo": "repo: https://github.com/lab/datasets.git",
    "data.*.rev": "rev: v2",
    "data.*.dest": "dest: data/mnist",
    "data.*.name": "name: MNIST",
    "staging": "staging: inline",
    "params": "params: {lr: 0.001, epochs: 10}",
    "params.*": "lr: 0.001",
    "env": "env: {OMP_NUM_THREADS: '8'}",
    "env.*": "OMP_NUM_THREADS: '8'",
    "resources": "resources: {cpus_per_task: 8, mem: 16G, time: '02:00:00'}",
    "resources.partition": "partition: gpu",
    "resources.nodes": "nodes: 2",
    "resources.ntasks": "ntasks: 4",
    "resources.cpus_per_task": "cpus_per_task: 8",
    "resources.mem": "mem: 16G",
    "resources.gpus": "gpus: 1",
    "resources.gpu_type": "gpu_type: a100",
    "resources.time": "time: '02:00:00'",
    "resources.qos": "qos: high",
    "priority": "priority: 10",
    "template": "template: default",
    "extra_directives": "extra_directives: ['--constraint=skylake']",
    "extra_directives.*": "- --constraint=skylake",
    "tags": "tags: {paper: neurips}",
    "tags.*": "paper: neurips",
    "schedule": "schedule: {cron: '0 3 * * 1', timezone: Europe/Berlin}",
    "schedule.cron": "cron: '0 3 * * 1'",
    "schedule.every_s": "every_s: 3600",
    "schedule.timezone": "timezone: Europe/Berlin",
    "schedule.name": "name: nightly-retrain",
    "schedule.catch_up": "catch_up: one",
    "schedule.catch_up_grace_s": "catch_up_grace_s: 3600",
    "schedule.allow_overlap": "allow_overlap: false",
    "schedule.on_data_change": "on_data_change: true",
    "schedule.check_every_s": "check_every_s: 300",
    "sweep": "sweep: {grid: {lr: [0.1, 0.01], seed: [1, 2]}}",
    "sweep.grid": "grid: {lr: [0.1, 0.01], seed: [1, 2]}",
    "sweep.grid.*": "lr: [0.1, 0.01]",
    "sweep.grid.*.*": "lr: [0.1, 0.01]",
    "sweep.list": "list: [{lr: 0.1, seed: 1}, {lr: 0.01, seed: 7}]",
    "sweep.list.*": "- {lr: 0.1, seed: 1}",
    "sweep.list.*.*": "lr: 0.1",
    "sweep.random": "random: {samples: 20, seed: 0, space: {lr: {loguniform: [1.0e-4, 0.1]}}}",
    "sweep.random.samples": "samples: 50",
    "sweep.random.seed": "seed: 0",
    "sweep.random.space": "space: {lr: {loguniform: [1.0e-4, 0.1]}, depth: {choice: [18, 34]}}",
    "sweep.random.space.*": "lr: {loguniform: [1.0e-4, 0.1]}",
    "sweep.random.space.*.uniform": "uniform: [0.0, 0.5]",
    "sweep.random.space.*.uniform.*": "uniform: [0.0, 0.5]",
    "sweep.random.space.*.loguniform": "loguniform: [1.0e-4, 0.1]",
    "sweep.random.space.*.loguniform.*": "loguniform: [1.0e-4, 0.1]",
    "sweep.random.space.*.randint": "randint: [1, 8]",
    "sweep.random.space.*.randint.*": "randint: [1, 8]",
    "sweep.random.space.*.choice": "choice: [18, 34]",
    "sweep.random.space.*.choice.*": "choice: [18, 34]",
    "sweep.objective": "objective: {metric: val_accuracy, mode: max}",
    "sweep.objective.metric": "metric: val_accuracy",
    "sweep.objective.mode": "mode: max",
    "sweep.max_parallel": "max_parallel: 4",
    "retry": "retry: {max_attempts: 4, on: [NODE_FAIL, PREEMPTED, TIMEOUT], backoff_s: 60}",
    "retry.max_attempts": "max_attempts: 4",
    "retry.on": "on: [NODE_FAIL, PREEMPTED, TIMEOUT]",
    "retry.on.*": "on: [NODE_FAIL, PREEMPTED, TIMEOUT]",
    "retry.backoff_s": "backoff_s: 60",
    "checkpoint": "checkpoint: {signal: USR1, before_s: 300}",
    "checkpoint.signal": "signal: USR1",
    "checkpoint.before_s": "before_s: 300",
}
_EXPECTED: Final = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}
_MODELS: Final[dict[str, type[BaseModel]]] = {
    "": Spec,
    "resources": Resources,
    "code": Code,
    "data.*": DataTarget,
    "schedule": ScheduleBlock,
    "sweep": SweepDef,
    "sweep.random": RandomSweep,
    "sweep.random.space.*": Distribution,
    "sweep.objective": SweepObjective,
    "retry": RetryPolicy,
    "checkpoint": Checkpoint,
}
# A sweep's key may hold a dot (resources.mem), written as it is: sweep.grid.resources.mem[1].
_SWEEP_KEY_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")


def _location(loc: tuple[int | str, ...]) -> str:
    if not loc or loc[0] != "sweep":
        return dotted(loc, _DICT_FIELDS)
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _SWEEP_KEY_RE.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _user_keys(loc: tuple[int | str, ...]) -> set[int]:
    """The positions in a sweep location that hold a user's key: sweep.grid.<key>,
    sweep.list[i].<key>, sweep.random.space.<key>."""
    if loc[:2] == ("sweep", "grid"):
        return {2}
    if loc[:2] == ("sweep", "list"):
        return {3}
    if loc[:3] == ("sweep", "random", "space"):
        return {3}
    return set()


def _pattern(loc: tuple[int | str, ...]) -> str:
    """The _EXAMPLES key for a location: dict keys and list indexes become '*'."""
    in_sweep = bool(loc) and loc[0] == "sweep"
    users = _user_keys(loc) if in_sweep else set()
    parts: list[str] = []
    for i, part in enumerate(loc):
        dict_key = i in users if in_sweep else i > 0 and loc[i - 1] in _DICT_FIELDS
        wild = isinstance(part, int) or dict_key
        parts.append("*" if wild else str(part))
    return ".".join(parts)


def _unknown_field(parent: str, key: str) -> str:
    model = _MODELS.get(parent)
    allowed = [info.alias or name for name, info in model.model_fields.items()] if model else []
    message = f"unknown field {key!r}"
    if parent == "" and key in Resources.model_fields:
        return f"{message}; {key} belongs under resources, e.g. resources: {{{key}: ...}}"
    if parent == "resources" and key in Spec.model_fields:
        return f"{message}; {key} belongs at the top level of the spec, not under resources"
    close = closest(key.replace("-", "_").lower(), allowed)
    if parent == "sweep" and key in {"points", "lists", "values"}:
        close = "list"
    if close:
        message += f"; did you mean {close!r}?"
    else:
        message += "."
    if parent == "resources" and key in {"gres", "gpu", "gpus_per_node"}:
        message += " GPUs are asked for with gpus and gpu_type, e.g. gpus: 2, gpu_type: a100."
    elif parent == "" and key in {"account", "output", "error", "job_name", "job-name"}:
        message += " hpcops sets it itself."
    where = {
        "": "a spec",
        "data.*": "a data target",
        "sweep": "a sweep",
        "sweep.random.space.*": "a distribution",
    }.get(parent, parent)
    return f"{message} Allowed fields in {where}: {', '.join(allowed)}"


def translate(error: Any) -> FieldProblem:
    loc = tuple(error["loc"])
    kind: str = error["type"]
    value = error.get("input")
    if loc and loc[-1] == "[key]":  # a dict key failed
        loc = loc[:-1]
        if kind == "string_type":
            return FieldProblem(
                _location(loc), f"keys must be strings; got {describe_value(value)}"
            )
    where = _location(loc)
    pattern = _pattern(loc)
    example = _EXAMPLES.get(pattern)
    if kind == "value_error":
        return FieldProblem(where, str(error["ctx"]["error"]))
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return FieldProblem(where, f"must be one of {allowed}; got {describe_value(value)}")
    if kind == "missing":
        return FieldProblem(where, f"is required; e.g. {example or MINIMAL_SPEC}")
    if kind == "extra_forbidden":
        return FieldProblem(where, _unknown_field(_pattern(loc[:-1]), str(loc[-1])))
    if kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}; got {describe_value(value)}"
        if kind == "int_type" and isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
            message += " (write the number without quotes)"
        elif kind == "int_type" and isinstance(value, float) and value.is_integer():
            message += f" (write {int(value)})"
        elif kind == "string_type" and isinstance(value, bool):
            message += " (YAML reads true and false as booleans; quote it if you meant text)"
        elif kind == "string_type" and isinstance(value, int | float):
            message += f" (quote it: '{value}')"
        elif value is None:
            message += " (give it a value, or remove the line)"
        elif pattern in {"env.*", "tags.*"} and isinstance(value, list):
            message += " (one variable holds one string: write the items as one, e.g. '0,1')"
        if example:
            message += f"; e.g. {example}"
        return FieldProblem(where, message)
    return FieldProblem(where, str(error.get("msg", kind)))


def validate(data: dict[str, object], source: str) -> Spec:
    """A Spec from plain data, or SpecError with every problem in our words (at most 50)."""
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        problems = [translate(e) for e in exc.errors(include_url=False)]
        raise SpecError(source, problems[:MAX_PROBLEMS]) from None
