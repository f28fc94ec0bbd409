"""pydantic's errors about a pipeline file in our words, as FieldProblems.

The wording of a wrong type, a bad value or a refused literal is the spec's own
(hpcops.spec.messages.translate): one voice for both files. What only a pipeline knows is here:
its fields' examples, which fields a step or a register block allows, and what a field that
belongs elsewhere (a spec's `command:` written into a step) should have been.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ValidationError

from hpcops.errors import FieldProblem
from hpcops.names import closest
from hpcops.pipeline.model import PipelineDef, Register, Step
from hpcops.spec import Spec, SweepObjective
from hpcops.spec.messages import translate as translate_spec_error
from hpcops.yamlio import MAX_PROBLEMS, dotted

MINIMAL_PIPELINE: Final = (
    "name: nightly-retrain\n"
    "steps:\n"
    "  prepare: {spec: prepare.yaml}\n"
    "  train: {spec: train.yaml, after: [prepare]}\n"
)
_EXAMPLES: Final = {
    "name": "name: nightly-retrain",
    "steps": "steps: {prepare: {spec: prepare.yaml}, train: {spec: train.yaml, after: [prepare]}}",
    "steps.*": "train: {spec: train.yaml, after: [prepare]}",
    "steps.*.spec": "spec: train.yaml",
    "steps.*.after": "after: [prepare]",
    "steps.*.after.*": "after: [prepare]",
    "steps.*.inputs": "inputs: {candidate: train.best}",
    "steps.*.inputs.*": "candidate: train.best",
    "steps.*.register": (
        "register: {model: evaluate, name: digits-classifier, if_better: {metric: "
        "test_accuracy, mode: max}}"
    ),
    "steps.*.register.model": "model: evaluate",
    "steps.*.register.name": "name: digits-classifier",
    "steps.*.register.alias": "alias: champion",
    "steps.*.register.artifact_path": "artifact_path: model",
    "steps.*.register.if_better": "if_better: {metric: test_accuracy, mode: max}",
    "steps.*.register.if_better.metric": "metric: test_accuracy",
    "steps.*.register.if_better.mode": "mode: max",
}
_MODELS: Final[dict[str, tuple[type[BaseModel], str]]] = {
    "": (PipelineDef, "a pipeline"),
    "steps.*": (Step, "a step"),
    "steps.*.register": (Register, "a register step"),
    "steps.*.register.if_better": (SweepObjective, "if_better"),
}
# Words people bring from other workflow tools for "wait for": Argo, GitHub Actions, Airflow.
_WAIT_WORDS: Final = frozenset({"depends", "depends_on", "dependencies", "needs", "requires"})


def _pattern(loc: tuple[int | str, ...]) -> str:
    """The _EXAMPLES key for a location: a step's name, an input's name and an index are '*'."""
    parts = [str(part) for part in loc]
    for i, part in enumerate(loc):
        named = (i == 1 and loc[0] == "steps") or (i == 3 and loc[2] == "inputs")
        if isinstance(part, int) or named:
            parts[i] = "*"
    return ".".join(parts)


def _unknown_field(parent: str, key: str) -> str:
    model, where = _MODELS.get(parent, (None, parent))
    allowed = [info.alias or name for name, info in model.model_fields.items()] if model else []
    message = f"unknown field {key!r}"
    close = closest(key.lower(), allowed)
    if close:
        message += f"; did you mean {close!r}?"
    elif parent == "" and key == "schedule":
        message += (
            "; a pipeline is scheduled on the command line, e.g. hpcops schedule add "
            "pipeline.yaml --cron '0 3 * * 1'."
        )
    elif parent == "steps.*" and key.lower() in _WAIT_WORDS:
        message += "; a step waits for others with after:, e.g. after: [prepare]."
    elif parent in {"", "steps.*"} and key in Spec.model_fields:
        message += "; it belongs in a step's spec file, which the step names: spec: train.yaml."
    else:
        message += "."
    return f"{message} Allowed fields in {where}: {', '.join(allowed)}"


def translate(error: Any) -> FieldProblem:
    """One pydantic error about a pipeline file as a FieldProblem that names the step and the
    field and, where it helps, gives a valid example."""
    loc = tuple(error["loc"])
    kind: str = error["type"]
    if kind == "extra_forbidden":
        return FieldProblem(dotted(loc), _unknown_field(_pattern(loc[:-1]), str(loc[-1])))
    if kind == "missing":
        example = _EXAMPLES.get(_pattern(loc), MINIMAL_PIPELINE)
        return FieldProblem(dotted(loc), f"is required; e.g. {example}")
    problem = translate_spec_error(error)
    hint = _EXAMPLES.get(_pattern(loc[:-1] if loc and loc[-1] == "[key]" else loc))
    if hint and "e.g." not in problem.message:
        return FieldProblem(problem.location, f"{problem.message}; e.g. {hint}")
    return problem


def problems_of(exc: ValidationError) -> list[FieldProblem]:
    """Every problem pydantic found, in our words, at most MAX_PROBLEMS (50)."""
    return [translate(e) for e in exc.errors(include_url=False)][:MAX_PROBLEMS]
