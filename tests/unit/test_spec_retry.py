"""Retries and checkpoints in the spec: the `retry:` and `checkpoint:` blocks, their checks across
fields, the canonical text, and a sweep's points carrying them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError
from spec_corpus import assert_problem, assert_refused, bad_spec_files, problems

from hpcops.spec import (
    MAX_ATTEMPTS,
    RETRY_STATES,
    Checkpoint,
    RetryPolicy,
    Spec,
    load_spec_file,
    parse_spec,
    point_spec,
    point_specs,
    sets_signal,
    spec_to_yaml,
    sweep_points,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
EXAMPLES_DIR = Path(__file__).parents[2] / "configs" / "examples"
BASE = "name: long-train\nexperiment: imagenet\ncommand: python train.py\n"
RETRY = "retry:\n  max_attempts: 4\n  on: [NODE_FAIL, PREEMPTED, TIMEOUT]\n  backoff_s: 60\n"
CHECKPOINT = "checkpoint:\n  signal: USR1\n  before_s: 300\n"

# The retry and checkpoint files of the malformed-spec corpus (tests/fixtures/bad_specs).
RETRY_BAD_SPECS: dict[str, tuple[str, str]] = {
    "retry_backoff_negative.yaml": ("retry.backoff_s", "must be between 0 and 86400; got -5"),
    "retry_backoff_over_a_day.yaml": ("retry.backoff_s", "must be between 0 and 86400; got 100000"),
    "retry_max_attempts_absurd.yaml": ("retry.max_attempts", "must be between 1 and 20; got 100"),
    "retry_max_attempts_zero.yaml": ("retry.max_attempts", "must be between 1 and 20; got 0"),
    "retry_misspelled_key.yaml": ("retry.max_attempt", "did you mean 'max_attempts'?"),
    "retry_not_mapping.yaml": ("retry", "expected a mapping; got the integer 3"),
    "retry_on_cancelled.yaml": ("retry.on[1]", "a cancel is meant to stop the run"),
    "retry_on_empty.yaml": ("retry.on", "is empty; name the endings that start a new attempt"),
    "retry_on_not_a_list.yaml": ("retry.on", "expected a list; got the string 'TIMEOUT'"),
    "retry_state_lower_case.yaml": ("retry.on[1]", "(write TIMEOUT, as sacct spells it)"),
    "retry_state_misspelled.yaml": ("retry.on[1]", "(did you mean NODE_FAIL?)"),
    "checkpoint_before_past_sbatch_limit.yaml": (
        "checkpoint.before_s",
        "must be between 10 and 65535; got 86400",
    ),
    "checkpoint_before_time_limit.yaml": (
        "checkpoint.before_s",
        "must be less than the run's time limit, resources.time '00:10:00' (600 s); got 600",
    ),
    "checkpoint_before_too_short.yaml": (
        "checkpoint.before_s",
        "must be between 10 and 65535; got 5",
    ),
    "checkpoint_missing_before.yaml": ("checkpoint.before_s", "is required"),
    "checkpoint_signal_sig_prefix.yaml": ("checkpoint.signal", "(write USR1, without SIG)"),
    "checkpoint_signal_term.yaml": ("checkpoint.signal", "must be USR1 or USR2; got 'TERM'"),
    "checkpoint_sweep_point_time.yaml": (
        "sweep.list[1]",
        "resources.time: '00:05:00'} makes checkpoint.before_s invalid: must be less than",
    ),
    "checkpoint_with_signal_abbreviation.yaml": (
        "extra_directives[0]",
        "--sig=USR1@60 would fight checkpoint:, which sets --signal=B:USR1@300 itself",
    ),
    "checkpoint_with_signal_directive.yaml": (
        "extra_directives[1]",
        "--signal=B:USR2@120 would fight checkpoint:",
    ),
}


def problems_of(text: str) -> list[tuple[str, str]]:
    return problems(lambda: parse_spec(text, "t"))


# ─── the malformed-spec corpus ─────────────────────────────────────────────────────────────────


def test_every_retry_bad_spec_has_an_expectation_and_the_reverse() -> None:
    assert bad_spec_files(("retry_", "checkpoint_")) == sorted(RETRY_BAD_SPECS)


@pytest.mark.parametrize("filename", sorted(RETRY_BAD_SPECS))
def test_a_bad_retry_or_checkpoint_is_refused_naming_the_field(filename: str) -> None:
    assert_refused(filename, *RETRY_BAD_SPECS[filename])


def test_an_unknown_state_lists_the_allowed_ones() -> None:
    [(location, message)] = problems_of(BASE + "retry: {max_attempts: 2, on: [DEADLINE]}\n")
    assert location == "retry.on[0]"
    assert message.endswith("allowed: NODE_FAIL, PREEMPTED, TIMEOUT, FAILED, OUT_OF_MEMORY")


def test_several_problems_of_the_blocks_come_together() -> None:
    text = BASE + "retry: {max_attempts: 21, on: [], backoff_s: 1.5}\ncheckpoint: {signal: HUP}\n"
    locations = {loc for loc, _ in problems_of(text)}
    assert locations == {
        "retry.max_attempts",
        "retry.on",
        "retry.backoff_s",
        "checkpoint.signal",
        "checkpoint.before_s",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_attempts", "'3'"), ("max_attempts", "true"), ("max_attempts", "3.0"),
     ("backoff_s", "'60'"), ("on", "[1]"), ("on", "[null]")],
)  # fmt: skip
def test_the_retry_block_is_strict(field: str, value: str) -> None:
    block = {"max_attempts": "3", "on": "[TIMEOUT]", field: value}
    text = BASE + "retry: {" + ", ".join(f"{k}: {v}" for k, v in block.items()) + "}\n"
    [(location, _)] = problems_of(text)
    assert location.startswith(f"retry.{field}")


# ─── what is accepted ──────────────────────────────────────────────────────────────────────────


def test_the_issue_example_is_accepted() -> None:
    spec = parse_spec(BASE + RETRY + CHECKPOINT, "t")
    assert spec.retry == RetryPolicy(
        max_attempts=4, on=["NODE_FAIL", "PREEMPTED", "TIMEOUT"], backoff_s=60
    )
    assert spec.checkpoint == Checkpoint(signal="USR1", before_s=300)


def test_defaults_a_spec_without_the_blocks_and_inside_them() -> None:
    spec = parse_spec(BASE, "t")
    assert spec.retry is None and spec.checkpoint is None
    given = parse_spec(BASE + "retry: {max_attempts: 3}\ncheckpoint: {before_s: 60}\n", "t")
    assert given.retry == RetryPolicy(max_attempts=3, on=["NODE_FAIL", "PREEMPTED"], backoff_s=0)
    assert given.checkpoint == Checkpoint(signal="USR1", before_s=60)


def test_every_state_is_accepted_and_a_repeated_one_counts_once() -> None:
    states = ", ".join([*RETRY_STATES, "TIMEOUT", "NODE_FAIL"])
    spec = parse_spec(BASE + f"retry: {{max_attempts: 5, on: [{states}]}}\n", "t")
    assert spec.retry is not None
    assert spec.retry.on == list(RETRY_STATES)
    again = parse_spec(BASE + "retry: {max_attempts: 2, on: [TIMEOUT, FAILED, TIMEOUT]}\n", "t")
    assert again.retry is not None and again.retry.on == ["TIMEOUT", "FAILED"]


@pytest.mark.parametrize(
    "block",
    ["retry: {max_attempts: 1, on: [FAILED]}", f"retry: {{max_attempts: {MAX_ATTEMPTS}}}",
     "retry: {max_attempts: 2, backoff_s: 0}", "retry: {max_attempts: 2, backoff_s: 86400}",
     "checkpoint: {signal: USR2, before_s: 10}"],
)  # fmt: skip
def test_the_ends_of_each_range_are_accepted(block: str) -> None:
    parse_spec(BASE + block + "\n", "t")


def test_before_s_may_be_anything_below_the_time_limit() -> None:
    ninety = BASE + "resources: {time: '00:01:30'}\n"
    spec = parse_spec(ninety + "checkpoint: {before_s: 89}\n", "t")
    assert spec.checkpoint is not None and spec.checkpoint.before_s == 89
    [(location, message)] = problems_of(ninety + "checkpoint: {before_s: 90}\n")
    assert location == "checkpoint.before_s"
    assert "(90 s); got 90" in message
    # the default time limit is an hour
    problems_of(BASE + "checkpoint: {before_s: 3600}\n")
    parse_spec(BASE + "checkpoint: {before_s: 3599}\n", "t")
    # sbatch's own limit for the signal's time, under a 30-day time limit
    month = BASE + "resources: {time: 30-00:00:00}\n"
    parse_spec(month + "checkpoint: {before_s: 65535}\n", "t")
    [(location, _)] = problems_of(month + "checkpoint: {before_s: 65536}\n")
    assert location == "checkpoint.before_s"


def test_a_bad_time_limit_has_its_own_message_and_no_checkpoint_one() -> None:
    problems = problems_of(BASE + "resources: {time: soon}\ncheckpoint: {before_s: 300}\n")
    assert [loc for loc, _ in problems] == ["resources.time"]


def test_a_signal_directive_is_fine_without_checkpoint_only() -> None:
    directive = "extra_directives: ['--signal=B:USR1@60', '--constraint=ib']\n"
    parse_spec(BASE + directive, "t")
    [(location, message)] = problems_of(BASE + directive + "checkpoint: {before_s: 300}\n")
    assert location == "extra_directives[0]"
    assert "remove one of the two" in message


@pytest.mark.parametrize(
    ("item", "sets"),
    [("--signal=B:USR1@60", True), ("--signal", True), ("--sig=USR1", True), ("--si=USR1", True),
     ("--signa=USR2@9", True), ("--s=x", False), ("--switches=1", False),
     ("--sockets-per-node=1", False), ("--signals=1", False), ("-s", False)],
)  # fmt: skip
def test_which_items_sbatch_reads_as_signal(item: str, sets: bool) -> None:
    assert sets_signal(item) is sets


def test_the_blocks_are_frozen_and_refuse_unknown_fields() -> None:
    spec = parse_spec(BASE + RETRY + CHECKPOINT, "t")
    assert spec.retry is not None and spec.checkpoint is not None
    with pytest.raises(ValidationError):
        spec.retry.max_attempts = 5
    with pytest.raises(ValidationError):
        spec.checkpoint.before_s = 5
    [(location, message)] = problems_of(BASE + "checkpoint: {before_s: 60, every_s: 600}\n")
    assert location == "checkpoint.every_s"
    assert "Allowed fields in checkpoint: signal, before_s" in message


def test_the_model_refuses_alike_when_validated_directly() -> None:
    data = {"name": "t", "experiment": "e", "command": "c", "resources": {"time": "00:01:00"},
            "checkpoint": {"before_s": 60}}  # fmt: skip
    with pytest.raises(ValidationError) as info:
        Spec.model_validate(data)
    [error] = info.value.errors()
    assert error["loc"] == ("checkpoint", "before_s")


# ─── the canonical text ────────────────────────────────────────────────────────────────────────


def test_spec_to_yaml_round_trips_the_blocks() -> None:
    spec = parse_spec(BASE + RETRY + CHECKPOINT, "t")
    text = spec_to_yaml(spec)
    assert parse_spec(text, "canonical") == spec
    assert spec_to_yaml(parse_spec(text, "canonical")) == text
    assert text.endswith(
        "retry:\n  max_attempts: 4\n  'on':\n  - NODE_FAIL\n  - PREEMPTED\n  - TIMEOUT\n"
        "  backoff_s: 60\ncheckpoint:\n  signal: USR1\n  before_s: 300\n"
    )
    # defaults are written out, so the record says what the run did
    defaults = spec_to_yaml(parse_spec(BASE + "retry: {max_attempts: 2}\n", "t"))
    assert "retry:\n  max_attempts: 2\n  'on':\n  - NODE_FAIL\n  - PREEMPTED\n" in defaults
    assert "backoff_s: 0\n" in defaults


# sha256 of each golden spec's canonical text before retry: and checkpoint: existed.
CANONICAL_SHA256 = {
    "minimal": "30595d550449988dc3ca44b692b5fa0e2d9a9e2af16c3acefa881d124f250bf5",
    "gpu": "a3288b78f77d01f91e4860d529c147b374046b98c54b948c1448937a840986f2",
    "nasty": "3e5345d68fd233fa2063e12126d1b25205cc052bfc61432ff763b9142c329b64",
}


@pytest.mark.parametrize("name", sorted(CANONICAL_SHA256))
def test_a_spec_without_the_blocks_keeps_its_canonical_text(name: str) -> None:
    text = spec_to_yaml(parse_spec((GOLDEN_DIR / f"{name}.yaml").read_bytes(), name))
    assert "retry" not in text and "checkpoint" not in text
    assert hashlib.sha256(text.encode()).hexdigest() == CANONICAL_SHA256[name]


# ─── sweeps ────────────────────────────────────────────────────────────────────────────────────


def test_every_point_of_a_sweep_inherits_the_blocks() -> None:
    sweep = "sweep:\n  grid: {lr: [0.1, 0.01], resources.mem: [4G, 8G]}\n"
    spec = parse_spec(BASE + RETRY + CHECKPOINT + sweep, "t")
    points = point_specs(spec)
    assert len(points) == 4
    for point in points:
        assert point.retry == spec.retry and point.checkpoint == spec.checkpoint
        assert point.sweep is None
    one = point_spec(spec, sweep_points(spec)[3])
    assert (one.retry, one.checkpoint) == (spec.retry, spec.checkpoint)
    assert parse_spec(spec_to_yaml(spec), "canonical") == spec
    # a point's canonical text carries them too: it is what the point's run records
    assert parse_spec(spec_to_yaml(one), "point").checkpoint == spec.checkpoint


def test_a_sweep_that_sets_the_time_has_each_point_checked_against_its_own() -> None:
    # before_s is past the spec's own (default) hour, but below every point's limit
    sweep = "sweep:\n  grid: {resources.time: ['04:00:00', '08:00:00']}\n"
    spec = parse_spec(BASE + "checkpoint: {before_s: 7200}\n" + sweep, "t")
    assert [p.resources.time for p in point_specs(spec)] == ["04:00:00", "08:00:00"]
    short = "sweep:\n  grid: {resources.time: ['04:00:00', '01:00:00']}\n"
    problems = problems_of(BASE + "checkpoint: {before_s: 7200}\n" + short)
    assert_problem(problems, "sweep.grid", "makes checkpoint.before_s invalid")


def test_a_random_sweep_checks_the_times_it_could_draw() -> None:
    sweep = (
        "sweep:\n  random:\n    samples: 4\n    space:\n"
        "      resources.time: {choice: ['02:00:00', '00:02:00']}\n"
    )
    problems = problems_of(BASE + CHECKPOINT + sweep)
    assert_problem(problems, "sweep.random", "could draw {resources.time: '00:02:00'}")


# ─── the example spec ──────────────────────────────────────────────────────────────────────────


def test_the_checkpoint_example_is_valid_and_retries_on_timeout() -> None:
    spec = load_spec_file(EXAMPLES_DIR / "checkpoint.yaml")
    assert spec.retry is not None and "TIMEOUT" in spec.retry.on
    assert spec.checkpoint == Checkpoint(signal="USR1", before_s=30)
    assert spec.resources.time_limit_s == 60
    assert (EXAMPLES_DIR / "count_to.py").is_file()
