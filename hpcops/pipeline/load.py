"""Reading a pipeline file: YAML (through hpcops.yamlio, the one reader) in, a Pipeline whose
steps' spec files are loaded and checked out.

Three passes, each only once the one before found nothing, so every message is about a file
whose earlier layers are sound: the file's shape (model.py, messages.py); the references
between steps (model.reference_problems); the steps' spec files (hpcops.spec.load_spec_file,
each problem re-located under `steps.<name>.spec`) and what a reference needs of them (`.best`
needs a sweep with an objective). Every refusal is one SpecError naming the pipeline file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from hpcops.describe import describe_value
from hpcops.errors import FieldProblem, SpecError
from hpcops.names import closest
from hpcops.pipeline.graph import Graph
from hpcops.pipeline.messages import MINIMAL_PIPELINE, problems_of
from hpcops.pipeline.model import PipelineDef, Step, reference_problems
from hpcops.spec import Spec, load_spec_file, parse_spec, spec_to_yaml
from hpcops.yamlio import (
    MAX_PROBLEMS,
    Document,
    YamlProblems,
    dotted,
    read_bounded,
    read_document,
    read_yaml,
)

PIPELINE: Final = Document(
    "pipeline",
    "a pipeline needs five at most",
    "A pipeline names its steps' spec files; the specs hold the rest",
)
_OBJECTIVE_EXAMPLE: Final = "e.g. objective: {metric: val_accuracy, mode: max}"


@dataclass(frozen=True)
class Pipeline:
    """A pipeline file, checked, with each spec step's spec loaded (`specs`, by step name)."""

    source: str
    definition: PipelineDef
    specs: Mapping[str, Spec]

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def steps(self) -> Mapping[str, Step]:
        return self.definition.steps

    @property
    def graph(self) -> Graph:
        return self.definition.graph


def is_pipeline_data(root: object) -> bool:
    """A pipeline has a top-level `steps:` and no `command:`; anything else is read as a spec.

    Any `steps:` counts, not only a mapping: `steps: [prepare, train]` is a pipeline written
    wrongly, and the pipeline's message about it helps more than a spec's "unknown field".
    """
    return isinstance(root, dict) and "steps" in root and "command" not in root


def is_pipeline_text(data: bytes | str) -> bool:
    """Whether `hpcops submit` should read this file as a pipeline. Unreadable YAML is not a
    pipeline: the spec reader then reports what is wrong with it, as it always has."""
    try:
        return is_pipeline_data(read_yaml(data, PIPELINE))
    except YamlProblems:
        return False


def _plain_data(data: bytes) -> dict[str, object]:
    root = read_yaml(data, PIPELINE)
    if not isinstance(root, dict):
        got = "empty" if root is None else f"{describe_value(root)}"
        raise YamlProblems.one(
            f"the pipeline must be a YAML mapping with name: and steps:; got {got}. A minimal "
            f"pipeline is:\n{MINIMAL_PIPELINE}"
        )
    return root


def _spec_problems(name: str, spec_path: Path, error: SpecError) -> Iterator[FieldProblem]:
    """A step's spec file's problems, re-located under `steps.<name>.spec` and naming the file."""
    base = dotted(("steps", name, "spec"))
    for problem in error.problems:
        where = f"{base}.{problem.location}" if problem.location else base
        message = problem.message
        if not spec_path.is_file():  # a misspelt file: name the one beside it, if close
            close = closest(spec_path.name, _siblings(spec_path))
            message += f" (did you mean {close!r}?)" if close else ""
        yield FieldProblem(where, f"{spec_path.name}: {message}")


def is_pipeline_file(path: str | Path) -> bool:
    """Whether a file is a pipeline (is_pipeline_text), read as bounded as the loader reads it;
    an unreadable file is not one: the spec reader then says what is wrong with it."""
    try:
        return is_pipeline_text(read_bounded(path, PIPELINE))
    except (OSError, YamlProblems):
        return False


def _siblings(path: Path) -> list[str]:
    try:
        return [p.name for p in path.parent.iterdir()][:1000]  # a huge folder costs nothing more
    except OSError:
        return []


def _load_specs(
    definition: PipelineDef, base_dir: Path
) -> tuple[dict[str, Spec], list[FieldProblem]]:
    specs: dict[str, Spec] = {}
    problems: list[FieldProblem] = []
    for name, step in definition.steps.items():
        if step.spec is None:
            continue
        path = base_dir / step.spec
        try:
            specs[name] = load_spec_file(path)
        except SpecError as exc:
            if is_pipeline_file(path):  # one message, not the spec reader's dozen about it
                problems.append(
                    FieldProblem(
                        dotted(("steps", name, "spec")),
                        f"{step.spec} is a pipeline; a step runs a spec file, and pipelines do "
                        "not nest: copy its steps into this pipeline",
                    )
                )
            else:
                problems.extend(_spec_problems(name, path, exc))
            continue
        if specs[name].schedule is not None:
            problems.append(
                FieldProblem(
                    dotted(("steps", name, "spec")),
                    f"{step.spec} has schedule:; a step runs when its pipeline does. Schedule "
                    "the pipeline (hpcops schedule add pipeline.yaml --cron '0 3 * * 1') and "
                    "remove schedule: from the spec",
                )
            )
    return specs, problems


def _best_problem(source: str, spec: Spec, path: str, what: str) -> str | None:
    """Why a sweep's best point cannot be taken from `source`, or None."""
    if spec.sweep is None:
        return (
            f"{what} needs {source} to be a sweep, and its spec {path} has no sweep:; take "
            f"{source}.run, its one run"
        )
    if spec.sweep.objective is None:
        return (
            f"{what} needs {source}'s sweep to rank its points, and {path} has no "
            f"sweep.objective; add one, {_OBJECTIVE_EXAMPLE}"
        )
    return None


def _output_problems(definition: PipelineDef, specs: Mapping[str, Spec]) -> list[FieldProblem]:
    """`.best` of a step that is no sweep, or whose sweep has no objective; a register step's
    model from such a sweep (the model registered is its best point's)."""
    problems: list[FieldProblem] = []
    for name, step in definition.steps.items():
        for key, ref in step.inputs.items():
            source, _, output = ref.rpartition(".")
            if output != "best" or source not in specs:
                continue
            path = definition.steps[source].spec or ""
            why = _best_problem(source, specs[source], path, f"{ref!r}")
            if why:
                problems.append(FieldProblem(dotted(("steps", name, "inputs", key)), why))
        model = step.promotion.model if step.promotion else ""
        if model in specs and specs[model].sweep is not None:
            path = definition.steps[model].spec or ""
            why = _best_problem(model, specs[model], path, "registering a sweep's model")
            if why:
                problems.append(FieldProblem(dotted(("steps", name, "register", "model")), why))
    return problems


def _parse(data: bytes, source: str, base_dir: Path) -> Pipeline:
    try:
        plain = _plain_data(data)
    except YamlProblems as exc:
        raise SpecError(source, exc.problems) from None
    try:
        definition = PipelineDef.model_validate(plain)
    except ValidationError as exc:
        raise SpecError(source, problems_of(exc)) from None
    problems = reference_problems(definition)
    if problems:
        raise SpecError(source, problems[:MAX_PROBLEMS])
    specs, problems = _load_specs(definition, base_dir)
    problems += _output_problems(definition, specs)
    if problems:
        raise SpecError(source, problems[:MAX_PROBLEMS])
    return Pipeline(source, definition, specs)


def load_pipeline_file(path: str | Path) -> Pipeline:
    """Read and check a pipeline file and every spec file its steps name (relative to its
    folder). Raises SpecError, and nothing else, for any input; nothing is queued by reading."""
    source = os.fspath(path)
    data = read_document(path, PIPELINE, "pipeline file")
    try:
        return _parse(data, source, Path(path).absolute().parent)
    except SpecError:
        raise
    except Exception as exc:  # a bug of ours must still come out as the promised error
        raise SpecError(source, [FieldProblem("", f"could not be read: {exc!r}")]) from exc


# ─── on the wire ───────────────────────────────────────────────────────────────────────────────


def pipeline_to_wire(pipeline: Pipeline) -> dict[str, object]:
    """A loaded pipeline as the client sends it to the daemon: its definition as plain data,
    and each spec step's spec as canonical YAML (its workdir made absolute by the loader)."""
    return {
        "source": pipeline.source,
        "definition": pipeline.definition.model_dump(mode="json", by_alias=True),
        "specs": {name: spec_to_yaml(spec) for name, spec in pipeline.specs.items()},
    }


def pipeline_from_wire(data: object, source: str = "pipeline") -> Pipeline:
    """The daemon's side of `pipeline_to_wire`, for a request nobody vouches for: every check of
    load_pipeline_file but the files' reading is made again. Raises SpecError only."""
    if not isinstance(data, dict):
        raise SpecError(source, [FieldProblem("", "a pipeline must be an object")])
    given = data.get("source")
    source = given if isinstance(given, str) and given and len(given) <= 4096 else source
    texts = data.get("specs")
    if not isinstance(texts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in texts.items()
    ):
        raise SpecError(source, [FieldProblem("specs", "must map step names to spec YAML")])
    try:
        definition = PipelineDef.model_validate(data.get("definition"))
    except ValidationError as exc:
        raise SpecError(source, problems_of(exc)) from None
    problems = reference_problems(definition)
    if problems:
        raise SpecError(source, problems[:MAX_PROBLEMS])
    specs: dict[str, Spec] = {}
    for name, step in definition.steps.items():
        where = dotted(("steps", name, "spec"))
        if step.spec is None:
            continue
        text = texts.get(name)
        if text is None:
            problems.append(FieldProblem(where, "its spec was not sent"))
            continue
        try:
            specs[name] = parse_spec(text, f"{source}, step {name}")
        except SpecError as exc:
            problems += [
                FieldProblem(f"{where}.{x.location}" if x.location else where, x.message)
                for x in exc.problems
            ]
    extra = sorted(set(texts) - set(definition.steps))
    if extra:
        problems.append(FieldProblem("specs", f"specs sent for no step: {', '.join(extra)}"))
    problems += _output_problems(definition, specs)
    if problems:
        raise SpecError(source, problems[:MAX_PROBLEMS])
    return Pipeline(source, definition, specs)
