"""Reading a pipeline file (hpcops.pipeline): the example loads, and every malformed pipeline in
tests/fixtures/bad_pipelines is refused naming the step and the field, in our words."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_corpus import assert_problem

from hpcops.errors import SpecError
from hpcops.pipeline import (
    MAX_PIPELINE_STEPS,
    Pipeline,
    is_pipeline_text,
    load_pipeline_file,
    topological_order,
)
from hpcops.spec import load_spec_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "examples" / "pipeline" / "pipeline.yaml"
BAD_DIR = Path(__file__).parent.parent / "fixtures" / "bad_pipelines"
_LEAKS = ("pydantic", "Input should", "Value error", "Traceback")

_SWEEP_OBJECTIVE = "add one, e.g. objective: {metric: val_accuracy, mode: max}"
_NOT_REGISTER = "is a register step: it runs no job, so there is no run to take"

# Each malformed pipeline: the location of its problem and a phrase of the message.
BAD_PIPELINES: dict[str, tuple[str, str]] = {
    "empty_steps.yaml": ("steps", "is empty; a pipeline needs at least one step, e.g. steps:"),
    "null_steps.yaml": ("steps", "is empty; a pipeline needs at least one step"),
    "steps_list.yaml": ("steps", "expected a mapping; got a list of 2 items; e.g. steps: {"),
    "too_many_steps.yaml": ("steps", f"has 51 steps; at most {MAX_PIPELINE_STEPS}"),
    "not_a_mapping.yaml": ("", "must be a YAML mapping with name: and steps:; got a list"),
    "missing_name.yaml": ("name", "is required; e.g. name: nightly-retrain"),
    "pipeline_schedule.yaml": (
        "schedule",
        "a pipeline is scheduled on the command line, e.g. hpcops schedule add pipeline.yaml",
    ),
    "cycle.yaml": ("steps", "a cycle: train -> evaluate -> train;"),
    "after_unknown.yaml": ("steps.train.after[0]", "no step 'prepar' (did you mean 'prepare'?)"),
    "after_self.yaml": ("steps.train.after[0]", "train cannot wait for itself"),
    "after_string.yaml": (
        "steps.train.after",
        "expected a list; got the string 'prepare'; e.g. after: [prepare]",
    ),
    "input_bad_output.yaml": (
        "steps.evaluate.inputs.candidate",
        "'train.bestt': no output 'bestt' (did you mean 'train.best'?); a reference is <step>.run",
    ),
    "input_not_a_ref.yaml": ("steps.evaluate.inputs.candidate", "'best' is not a reference;"),
    "input_unknown_step.yaml": (
        "steps.evaluate.inputs.candidate",
        "'trian.best': no step 'trian' (did you mean 'train'?)",
    ),
    "input_not_waited_for.yaml": (
        "steps.evaluate.inputs.candidate",
        "evaluate takes an input from train but does not wait for it; add it to after, e.g. "
        "after: [train]",
    ),
    "input_best_not_a_sweep.yaml": (
        "steps.evaluate.inputs.data",
        "'prepare.best' needs prepare to be a sweep, and its spec specs/prepare.yaml has no "
        "sweep:; take prepare.run",
    ),
    "input_best_no_objective.yaml": ("steps.evaluate.inputs.candidate", _SWEEP_OBJECTIVE),
    "input_from_register_step.yaml": ("steps.evaluate.inputs.model", f"promote {_NOT_REGISTER}"),
    "input_name_upper_case.yaml": (
        "steps.evaluate.inputs.Data",
        "an input name must be lower-case letters, digits and '_'",
    ),
    "register_model_unknown.yaml": (
        "steps.promote.register.model",
        "no step 'evaluat' (did you mean 'evaluate'?)",
    ),
    "register_model_not_waited_for.yaml": (
        "steps.promote.register.model",
        "promote takes a model from evaluate but does not wait for it",
    ),
    "register_model_is_register.yaml": ("steps.again.register.model", f"promote {_NOT_REGISTER}"),
    "register_sweep_no_objective.yaml": ("steps.promote.register.model", _SWEEP_OBJECTIVE),
    "register_alias_latest.yaml": (
        "steps.promote.register.alias",
        "'latest' is reserved by the MLflow Model Registry",
    ),
    "register_artifact_path_absolute.yaml": (
        "steps.promote.register.artifact_path",
        "must be a path inside the run's artifacts",
    ),
    "register_if_better_mode.yaml": (
        "steps.promote.register.if_better.mode",
        "must be one of 'max' or 'min'; got the string 'maximum'",
    ),
    "register_missing_name.yaml": (
        "steps.promote.register.name",
        "is required; e.g. name: digits-classifier",
    ),
    "register_with_inputs.yaml": ("steps.promote", "a register step runs no job, so it takes no"),
    "step_spec_and_register.yaml": ("steps.promote", "needs exactly one of spec"),
    "step_empty.yaml": ("steps.train", "needs exactly one of spec"),
    "step_needs.yaml": (
        "steps.train.needs",
        "unknown field 'needs'; a step waits for others with after:, e.g. after: [prepare]. "
        "Allowed fields in a step: spec, after, inputs, register",
    ),
    "step_command.yaml": ("steps.train.command", "it belongs in a step's spec file"),
    "step_name_space.yaml": ("steps['my step']", "contains a space at position 3; a step's name"),
    "spec_file_missing.yaml": (
        "steps.train.spec",
        "trian.yaml: cannot read the spec file: No such file or directory (did you mean "
        "'train.yaml'?)",
    ),
    "spec_file_invalid.yaml": (
        "steps.train.spec.resources.mem",
        "bad_mem.yaml: not a memory size; got 'lots'",
    ),
    "spec_path_above.yaml": ("steps.train.spec", "relative to the pipeline file's folder"),
    "spec_path_not_yaml.yaml": ("steps.train.spec", "ending in .yaml or .yml"),
    "spec_is_a_pipeline.yaml": (
        "steps.inner.spec",
        "specs/nested.yaml is a pipeline; a step runs a spec file, and pipelines do not nest",
    ),
    "spec_with_schedule.yaml": ("steps.nightly.spec", "specs/scheduled.yaml has schedule:;"),
}


def refusal(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_pipeline_file(path)
    return info.value


def test_every_bad_pipeline_has_an_expectation_and_the_reverse() -> None:
    assert {p.name for p in BAD_DIR.glob("*.yaml")} == set(BAD_PIPELINES)


@pytest.mark.parametrize("filename", sorted(BAD_PIPELINES))
def test_bad_pipeline_is_refused_naming_step_and_field(filename: str) -> None:
    location, phrase = BAD_PIPELINES[filename]
    error = refusal(BAD_DIR / filename)
    assert error.source == str(BAD_DIR / filename)
    assert error.exit_code == 2
    assert_problem([(p.location, p.message) for p in error.problems], location, phrase)
    assert len(error.problems) == 1, error.problems  # one mistake, one message
    for leak in _LEAKS:
        assert leak not in str(error)


def test_the_example_pipeline_loads_with_its_specs() -> None:
    pipeline = load_pipeline_file(EXAMPLE)
    assert pipeline.name == "digits-retrain"
    assert topological_order(pipeline.graph) == ["prepare", "train", "evaluate", "promote"]
    assert set(pipeline.specs) == {"prepare", "train", "evaluate"}  # promote runs no job
    train = pipeline.specs["train"]
    assert train == load_spec_file(EXAMPLE.parent / "sweep.yaml")
    assert train.sweep is not None and train.sweep.n_points == 4
    assert train.workdir == str(EXAMPLE.parent)  # a step's spec runs beside its own file
    promote = pipeline.steps["promote"].promotion
    assert promote is not None
    assert (promote.model, promote.alias, promote.artifact_path) == (
        "evaluate",
        "champion",
        "model",
    )
    assert pipeline.steps["evaluate"].inputs == {"candidate": "train.best"}


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path / "pipeline.yaml"


SPEC = "name: s\nexperiment: e\ncommand: python s.py\n"
SWEEP = SPEC + "sweep: {grid: {lr: [1, 2]}, objective: {metric: acc, mode: max}}\n"


def test_defaults_dotted_names_and_repeated_parents(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "s.yaml": SPEC,
            "sweep.yaml": SWEEP,
            "pipeline.yaml": (
                "name: p\nsteps:\n"
                "  train.v2: {spec: sweep.yaml}\n"
                "  eval: {spec: s.yml, after: [train.v2, train.v2], inputs: {c: train.v2.best}}\n"
                "  promote: {after: [eval], register: {model: eval, name: m}}\n"
            ),
            "s.yml": SPEC,
        },
    )
    pipeline = load_pipeline_file(path)
    assert isinstance(pipeline, Pipeline)
    assert pipeline.graph == {"train.v2": (), "eval": ("train.v2",), "promote": ("eval",)}
    register = pipeline.steps["promote"].promotion
    assert register is not None and register.if_better is None


def test_problems_of_one_pass_come_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"pipeline.yaml": "name: p\nsteps:\n  a: {spec: a.yaml, after: [x]}\n  b: {after: [y]}\n"},
    )
    found = [(p.location, p.message) for p in refusal(path).problems]
    assert [loc for loc, _ in found] == ["steps.b"]  # shape first: b is neither kind
    path.write_text(
        "name: p\nsteps:\n  a: {spec: a.yaml, after: [x]}\n  b: {spec: b.yaml, after: [y]}\n"
    )
    found = [(p.location, p.message) for p in refusal(path).problems]
    assert [loc for loc, _ in found] == ["steps.a.after[0]", "steps.b.after[0]"]


def test_an_unreadable_or_odd_file_is_still_a_spec_error(tmp_path: Path) -> None:
    assert "cannot read the pipeline file" in str(refusal(tmp_path / "absent.yaml"))
    (tmp_path / "bin.yaml").write_bytes(b"name: \xff\n")
    assert "not UTF-8 text" in str(refusal(tmp_path / "bin.yaml"))
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert "got empty" in str(refusal(tmp_path / "empty.yaml"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: p\nsteps: {a: {spec: a.yaml}}\n", True),
        ("name: p\nsteps: [a, b]\n", True),  # a pipeline written wrongly: its own messages
        ("name: s\nexperiment: e\ncommand: python s.py\n", False),
        ("name: s\ncommand: python s.py\nsteps: {a: {}}\n", False),  # a spec with a stray key
        ("", False),
        ("- a\n", False),
        ("name: [unclosed\n", False),  # not YAML: the spec reader says why
        (b"\xff\xfe", False),
    ],
)
def test_is_pipeline_text(text: str | bytes, expected: bool) -> None:
    assert is_pipeline_text(text) is expected


def test_is_pipeline_text_on_the_examples() -> None:
    examples = REPO / "configs" / "examples"
    assert is_pipeline_text(EXAMPLE.read_bytes())
    for spec in [*examples.glob("*.yaml"), *EXAMPLE.parent.glob("[!p]*.yaml")]:
        assert not is_pipeline_text(spec.read_bytes()), spec
