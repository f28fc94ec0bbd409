"""Sweeps in the spec: the block's checks, the points it expands to, each point's own spec, and the
canonical text."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest
from spec_corpus import assert_problem, assert_refused, bad_spec_files, problems

from hpcops.errors import SpecError
from hpcops.spec import (
    MAX_SWEEP_POINTS,
    Point,
    Spec,
    SweepDef,
    check_sweep_points,
    load_spec_file,
    parse_spec,
    pin_sweep_seed,
    point_spec,
    point_specs,
    spec_to_yaml,
    sweep_points,
)
from hpcops.spec.fields import MAX_PARAMS

EXAMPLES_DIR = Path(__file__).parents[2] / "configs" / "examples"
BASE = (
    "name: resnet-lr\nexperiment: resnet\ncommand: python train.py\nparams: {epochs: 30, lr: 0.5}\n"
)

# The sweep files of the malformed-spec corpus (tests/fixtures/bad_specs): location, phrase.
SWEEP_BAD_SPECS: dict[str, tuple[str, str]] = {
    "sweep_grid_and_list.yaml": ("sweep", "needs exactly one of grid, list and random"),
    "sweep_grid_bad_mem.yaml": ("sweep.grid.resources.mem[1]", "not a memory size; got 'lots'"),
    "sweep_grid_empty.yaml": ("sweep.grid", "is empty"),
    "sweep_grid_ten_million.yaml": ("sweep.grid", "10,000,000 points; at most 10,000"),
    "sweep_grid_value_list.yaml": ("sweep.grid.lr[2]", "got a list of 2 items"),
    "sweep_list_bad_time.yaml": ("sweep.list[3].resources.time", "must be at most 30 days"),
    "sweep_list_value_mapping.yaml": ("sweep.list[1].lr", "got a mapping"),
    "sweep_loguniform_zero.yaml": ("sweep.random.space.lr.loguniform", "needs 0 < low < high"),
    "sweep_max_parallel_zero.yaml": ("sweep.max_parallel", "must be between 1 and 10000; got 0"),
    "sweep_objective_mode.yaml": ("sweep.objective.mode", "must be one of 'max' or 'min'"),
    "sweep_point_gpu_type_without_gpus.yaml": (
        "sweep.grid",
        "{resources.gpus: 0} makes resources.gpu_type invalid: names a GPU type",
    ),
    "sweep_resource_misspelled.yaml": (
        "sweep.grid.resources.gpu",
        "'gpu' is not a resource (did you mean resources.gpus?)",
    ),
    "sweep_unknown_distribution.yaml": (
        "sweep.random.space.lr",
        "unknown distribution 'normal'; allowed: uniform, loguniform, randint, choice",
    ),
    "sweep_with_schedule.yaml": ("sweep", "both sweep: and schedule:"),
}


def spec_of(sweep_yaml: str, extra: str = "") -> Spec:
    return parse_spec(BASE + extra + "sweep:\n" + sweep_yaml, "t")


def problems_of(sweep_yaml: str, extra: str = "") -> list[tuple[str, str]]:
    return problems(lambda: spec_of(sweep_yaml, extra))


# ─── the malformed-spec corpus ─────────────────────────────────────────────────────────────────


def test_every_sweep_bad_spec_has_an_expectation_and_the_reverse() -> None:
    assert bad_spec_files(("sweep_",)) == sorted(SWEEP_BAD_SPECS)


@pytest.mark.parametrize("filename", sorted(SWEEP_BAD_SPECS))
def test_a_bad_sweep_is_refused_naming_the_field(filename: str) -> None:
    assert_refused(filename, *SWEEP_BAD_SPECS[filename])


# ─── grid, list, random ────────────────────────────────────────────────────────────────────────


def test_a_grid_is_the_product_in_key_order_the_last_key_fastest() -> None:
    spec = spec_of("  grid: {lr: [0.1, 0.01], seed: [1, 2, 3], resources.mem: [4G]}\n")
    assert spec.sweep is not None
    assert spec.sweep.kind == "grid"
    assert spec.sweep.n_points == 6
    assert spec.sweep.keys == ["lr", "seed", "resources.mem"]
    assert sweep_points(spec) == [
        {"lr": 0.1, "seed": 1, "resources.mem": "4G"},
        {"lr": 0.1, "seed": 2, "resources.mem": "4G"},
        {"lr": 0.1, "seed": 3, "resources.mem": "4G"},
        {"lr": 0.01, "seed": 1, "resources.mem": "4G"},
        {"lr": 0.01, "seed": 2, "resources.mem": "4G"},
        {"lr": 0.01, "seed": 3, "resources.mem": "4G"},
    ]
    # the order is the YAML's, not alphabetical
    swapped = spec_of("  grid: {seed: [1, 2], lr: [0.1, 0.01]}\n")
    assert [list(p.values()) for p in sweep_points(swapped)] == [
        [1, 0.1], [1, 0.01], [2, 0.1], [2, 0.01],
    ]  # fmt: skip


def test_a_list_is_its_points_in_order() -> None:
    spec = spec_of("  list:\n    - {lr: 0.1, seed: 1}\n    - {seed: 7}\n    - {lr: 0.1, seed: 1}\n")
    assert spec.sweep is not None and spec.sweep.kind == "list"
    assert spec.sweep.keys == ["lr", "seed"]
    assert sweep_points(spec) == [{"lr": 0.1, "seed": 1}, {"seed": 7}, {"lr": 0.1, "seed": 1}]


def test_scalar_types_are_kept() -> None:
    spec = spec_of("  grid: {x: [1, 1.0, true, '1', yes]}\n")
    values = [p["x"] for p in sweep_points(spec)]
    assert [type(v) for v in values] == [int, float, bool, str, str]  # YAML 1.2: yes is text


RANDOM = (
    "  random:\n    samples: 200\n    seed: {seed}\n    space:\n"
    "      lr: {{loguniform: [1.0e-4, 1.0e-1]}}\n      drop: {{uniform: [0, 0.5]}}\n"
    "      depth: {{choice: [18, 34, '50']}}\n      batch: {{randint: [16, 64]}}\n"
)


def test_a_random_sweep_is_deterministic_for_its_seed() -> None:
    spec = spec_of(RANDOM.format(seed=0))
    first, again = sweep_points(spec), sweep_points(spec_of(RANDOM.format(seed=0)))
    assert first == again
    assert sweep_points(spec_of(RANDOM.format(seed=1))) != first
    assert len(first) == 200
    assert all(list(p) == ["lr", "drop", "depth", "batch"] for p in first)


def test_a_random_sweep_never_touches_the_global_generator() -> None:
    random.seed(5)
    state = random.getstate()
    sweep_points(spec_of(RANDOM.format(seed=3)))
    assert random.getstate() == state


def test_random_values_stay_in_their_ranges() -> None:
    points = sweep_points(spec_of(RANDOM.format(seed=11)))
    for p in points:
        assert type(p["lr"]) is float and 1e-4 <= p["lr"] <= 1e-1
        assert type(p["drop"]) is float and 0 <= p["drop"] <= 0.5
        assert p["depth"] in (18, 34, "50")
        assert type(p["batch"]) is int and 16 <= p["batch"] <= 64
    # every choice and both ends of an integer range turn up in 200 draws
    assert {p["depth"] for p in points} == {18, 34, "50"}
    assert {16, 64} <= {p["batch"] for p in points}
    # loguniform spreads over the decades: about a third of the draws in each
    decades = [math.floor(math.log10(p["lr"])) for p in points]  # type: ignore[arg-type]
    assert all(decades.count(d) > 30 for d in (-4, -3, -2))


def test_a_random_sweep_without_a_seed_is_pinned_before_it_is_expanded() -> None:
    spec = spec_of(RANDOM.replace("    seed: {seed}\n", "").format())
    with pytest.raises(ValueError, match="pin one first"):
        sweep_points(spec)
    pinned = pin_sweep_seed(spec, 42)
    assert pinned.sweep is not None and pinned.sweep.random is not None
    assert pinned.sweep.random.seed == 42
    assert sweep_points(pinned) == sweep_points(spec_of(RANDOM.format(seed=42)))
    # a seed already there stays; other specs come back as they are
    assert pin_sweep_seed(pinned, 7) is pinned
    grid = spec_of("  grid: {lr: [1]}\n")
    assert pin_sweep_seed(grid, 7) is grid
    plain = parse_spec(BASE, "t")
    assert pin_sweep_seed(plain, 7) is plain
    with pytest.raises(ValueError, match="an integer from 0 to"):
        pin_sweep_seed(spec, -1)


def test_sweep_points_of_a_spec_without_a_sweep_is_an_error() -> None:
    with pytest.raises(ValueError, match="has no sweep"):
        sweep_points(parse_spec(BASE, "t"))


# ─── a point's own spec ────────────────────────────────────────────────────────────────────────


def test_a_points_spec_merges_its_values_and_drops_the_sweep() -> None:
    spec = spec_of(
        "  grid: {lr: [0.1], seed: [3], resources.mem: [8G], resources.time: [90]}\n"
        "  objective: {metric: val_accuracy, mode: max}\n",
        extra="resources: {mem: 4G, cpus_per_task: 2}\n",
    )
    [point] = sweep_points(spec)
    one = point_spec(spec, point)
    assert one.sweep is None
    assert one.params == {"epochs": 30, "lr": 0.1, "seed": 3}
    assert one.resources.mem == "8G" and one.resources.time == "90"
    assert one.resources.cpus_per_task == 2
    assert (one.name, one.experiment, one.command) == (spec.name, spec.experiment, spec.command)
    # the point's spec is an ordinary spec: its canonical text has no sweep and reads back
    assert "sweep" not in spec_to_yaml(one)
    assert parse_spec(spec_to_yaml(one), "t") == one
    assert point_specs(spec) == [one]


def test_a_bad_point_value_names_the_sweep_field() -> None:
    spec = spec_of("  list: [{lr: 0.1}, {lr: 0.2}]\n")
    with pytest.raises(SpecError) as info:
        point_spec(spec, {"lr": 0.1, "resources.mem": "lots"}, source="s.yaml")
    [problem] = info.value.problems
    assert info.value.source == "s.yaml"
    assert problem.location == "sweep.list.resources.mem"
    assert "not a memory size" in problem.message
    grid = spec_of("  grid: {lr: [0.1], resources.nodes: [1, 2]}\n")
    # a value the grid does not hold (a point from elsewhere) is named by its key
    with pytest.raises(SpecError) as info:
        point_spec(grid, {"lr": 0.1, "resources.nodes": 0})
    assert [p.location for p in info.value.problems] == ["sweep.grid.resources.nodes"]


@pytest.mark.parametrize(
    ("sweep_yaml", "location", "phrase"),
    [
        ("  grid: {resources.nodes: [1, 2, 0]}\n", "sweep.grid.resources.nodes[2]", "between 1"),
        (
            "  list: [{lr: 1}, {lr: 2}, {lr: 3}, {resources.mem: 0}]\n",
            "sweep.list[3].resources.mem",
            "must be at least 1M",
        ),
        (
            "  list: [{resources.partition: 'gpu;rm'}]\n",
            "sweep.list[0].resources.partition",
            "semicolon",
        ),
        (
            "  random: {samples: 5, seed: 1, space: {resources.nodes: {uniform: [1, 2]}}}\n",
            "sweep.random.space.resources.nodes",
            "point 0 drew {resources.nodes: 1.1",
        ),
        (  # no seed yet: the ends of a range are checked
            "  random: {samples: 5, space: {resources.nodes: {randint: [1, 100]}}}\n",
            "sweep.random.space.resources.nodes",
            "a point could draw {resources.nodes: 100}: must be between 1 and 64",
        ),
        (
            "  random: {samples: 5, space: {resources.qos: {choice: [high, 'a b']}}}\n",
            "sweep.random.space.resources.qos",
            "contains a space",
        ),
        (  # two keys together make the point bad
            "  grid: {resources.gpus: [1, 0], resources.gpu_type: [a100]}\n",
            "sweep.grid.resources.gpu_type[0]",
            "resources.gpus is 0",
        ),
    ],
)
def test_every_point_is_checked_when_the_spec_is_read(
    sweep_yaml: str, location: str, phrase: str
) -> None:
    assert_problem(problems_of(sweep_yaml), location, phrase)


def test_one_bad_point_among_thousands_is_found() -> None:
    times = ", ".join(f"'{m}'" for m in [*range(1, 60), 50_000])
    spec_yaml = (
        f"  grid: {{lr: [{', '.join(str(i) for i in range(100))}], resources.time: [{times}]}}\n"
    )
    problems = problems_of(spec_yaml)
    assert [loc for loc, _ in problems] == ["sweep.grid.resources.time[59]"]


def test_checking_10000_points_is_quick() -> None:
    # every point with resources of its own: one full validation each, the worst case
    points = "".join(f"    - {{lr: {i}, resources.time: {i + 1}}}\n" for i in range(10_000))
    text = BASE + "sweep:\n  list:\n" + points
    started = time.perf_counter()
    spec = parse_spec(text, "t")
    assert time.perf_counter() - started < 5
    assert spec.sweep is not None and spec.sweep.n_points == MAX_SWEEP_POINTS
    hundred = ", ".join(map(str, range(100)))
    grid = spec_of(f"  grid: {{a: [{hundred}], b: [{hundred}]}}\n")
    started = time.perf_counter()
    check_sweep_points(grid)
    assert time.perf_counter() - started < 1


# ─── the block's own checks ────────────────────────────────────────────────────────────────────


def test_a_huge_grid_is_refused_before_it_is_expanded() -> None:
    axes = "".join(f"    k{i}: [{', '.join(map(str, range(10)))}]\n" for i in range(150))
    started = time.perf_counter()
    problems = problems_of("  grid:\n" + axes)
    assert time.perf_counter() - started < 1
    assert_problem(problems, "sweep.grid", "more than 1,000,000,000,000,000 points; at most")
    just_over = (
        "  grid: {a: [" + ", ".join(map(str, range(101))) + "], b: " + str(list(range(100))) + "}\n"
    )
    assert_problem(problems_of(just_over), "sweep.grid", "10,100 points; at most 10,000")


@pytest.mark.parametrize(
    ("sweep_yaml", "location", "phrase"),
    [
        ("  {}\n", "sweep", "needs exactly one of grid, list and random"),
        ("  grid:\n", "sweep", "(grid empty (null))"),
        ("  list: []\n", "sweep.list", "is empty"),
        ("  grid: {lr: []}\n", "sweep.grid.lr", "is empty"),
        ("  grid: {lr: 0.1}\n", "sweep.grid.lr", "expected a list; got the number 0.1"),
        ("  grid: {lr: [0.1, 0.2, 0.1]}\n", "sweep.grid.lr", "[2] repeats [0]"),
        ("  grid: {lr: [.inf]}\n", "sweep.grid.lr[0]", "must be a finite number"),
        ("  grid: {lr: [null]}\n", "sweep.grid.lr[0]", "is empty (null)"),
        ("  grid: {'a b': [1]}\n", "sweep.grid['a b']", "contains a space"),
        ("  grid: {learning-rate: [1]}\n", "sweep.grid.learning-rate", "resources.<field>"),
        ("  grid: {params.lr: [1]}\n", "sweep.grid.params.lr", "write 'lr'"),
        ("  grid: {resources.cpus: [1]}\n", "sweep.grid.resources.cpus", "resources.qos"),
        ("  grid: {1: [1]}\n", "sweep.grid", "keys must be strings"),
        ("  list: [{lr: 0.1}, 3]\n", "sweep.list[1]", "expected a mapping"),
        ("  list: [{lr: [1, 2]}]\n", "sweep.list[0].lr", "got a list of 2 items"),
        ("  points: [{lr: 1}]\n", "sweep.points", "did you mean 'list'?"),
        ("  grid: {lr: [1]}\n  lst: 1\n", "sweep.lst", "Allowed fields in a sweep: grid, list"),
        ("  random: {space: {lr: {uniform: [0, 1]}}}\n", "sweep.random.samples", "required"),
        ("  random: {samples: 0, space: {lr: {uniform: [0, 1]}}}\n", "sweep.random.samples", "1"),
        (
            "  random: {samples: 10001, space: {lr: {uniform: [0, 1]}}}\n",
            "sweep.random.samples",
            "must be between 1 and 10000",
        ),
        (
            "  random: {samples: 2, seed: -1, space: {lr: {uniform: [0, 1]}}}\n",
            "sweep.random.seed",
            "must be between 0 and",
        ),
        ("  random: {samples: 2, space: {}}\n", "sweep.random.space", "is empty"),
        ("  random: {samples: 2, space: {lr: 0.1}}\n", "sweep.random.space.lr", "a mapping"),
        (
            "  random: {samples: 2, space: {lr: {unifrom: [0, 1]}}}\n",
            "sweep.random.space.lr",
            "unknown distribution 'unifrom' (did you mean 'uniform'?)",
        ),
        (
            "  random: {samples: 2, space: {lr: {uniform: [0, 1], choice: [1]}}}\n",
            "sweep.random.space.lr",
            "needs exactly one distribution",
        ),
        (
            "  random: {samples: 2, space: {lr: {uniform: [1, 0]}}}\n",
            "sweep.random.space.lr.uniform",
            "needs low < high",
        ),
        (
            "  random: {samples: 2, space: {lr: {uniform: [0, 1, 2]}}}\n",
            "sweep.random.space.lr.uniform",
            "needs [low, high], two numbers",
        ),
        (
            "  random: {samples: 2, space: {lr: {uniform: [0, .inf]}}}\n",
            "sweep.random.space.lr.uniform",
            "finite",
        ),
        (
            "  random: {samples: 2, space: {lr: {loguniform: [-1, 1]}}}\n",
            "sweep.random.space.lr.loguniform",
            "needs 0 < low < high",
        ),
        (
            "  random: {samples: 2, space: {lr: {randint: [1, 2.5]}}}\n",
            "sweep.random.space.lr.randint[1]",
            "expected an integer; got the number 2.5",
        ),
        (
            "  random: {samples: 2, space: {lr: {randint: [3, 1]}}}\n",
            "sweep.random.space.lr.randint",
            "needs low <= high",
        ),
        (
            "  random: {samples: 2, space: {lr: {choice: []}}}\n",
            "sweep.random.space.lr.choice",
            "is empty",
        ),
        (
            "  random: {samples: 2, space: {lr: {choice: [[1]]}}}\n",
            "sweep.random.space.lr.choice[0]",
            "got a list of 1 item",
        ),
        ("  grid: {lr: [1]}\n  objective: {metric: acc}\n", "sweep.objective.mode", "required"),
        (
            "  grid: {lr: [1]}\n  objective: {metric: 'acc;x', mode: max}\n",
            "sweep.objective.metric",
            "an MLflow metric name",
        ),
        (
            "  grid: {lr: [1]}\n  objective: {metric: acc, mode: MAX}\n",
            "sweep.objective.mode",
            "must be one of 'max' or 'min'",
        ),
        ("  grid: {lr: [1]}\n  max_parallel: 0\n", "sweep.max_parallel", "between 1 and 10000"),
        ("  grid: {lr: [1]}\n  max_parallel: 10001\n", "sweep.max_parallel", "got 10001"),
        ("  grid: {lr: [1]}\n  max_parallel: '4'\n", "sweep.max_parallel", "without quotes"),
        ("  grid: {EPOCHS: [1]}\n", "sweep", "'epochs' and 'EPOCHS' would both become"),
    ],
)
def test_a_bad_sweep_block_names_the_field(sweep_yaml: str, location: str, phrase: str) -> None:
    assert_problem(problems_of(sweep_yaml), location, phrase)


def test_a_sweep_cannot_be_scheduled_yet() -> None:
    problems = problems_of("  grid: {lr: [1]}\n", extra="schedule: {every_s: 3600}\n")
    assert_problem(problems, "sweep", "scheduled sweeps come with pipelines")


def test_the_sweeps_keys_count_with_the_specs_params() -> None:
    params = ", ".join(f"p{i}: 1" for i in range(MAX_PARAMS - 2))
    base = BASE.replace("params: {epochs: 30, lr: 0.5}", f"params: {{{params}}}")
    ok = parse_spec(base + "sweep:\n  grid: {p0: [1, 2], a: [1], b: [2]}\n", "t")
    assert ok.sweep is not None
    with pytest.raises(SpecError) as info:
        parse_spec(base + "sweep:\n  list: [{a: 1}, {b: 1}, {c: 1}]\n", "t")
    [problem] = info.value.problems
    assert problem.location == "sweep"
    assert f"make {MAX_PARAMS + 1} parameters; at most {MAX_PARAMS}" in problem.message


def test_a_sweep_may_override_a_param_of_the_spec() -> None:
    spec = spec_of("  grid: {lr: [0.1, 0.2]}\n")
    assert [s.params["lr"] for s in point_specs(spec)] == [0.1, 0.2]


def test_objective_and_max_parallel() -> None:
    spec = spec_of(
        "  grid: {lr: [1]}\n  objective: {metric: val/acc 1, mode: min}\n  max_parallel: 3\n"
    )
    assert spec.sweep is not None and spec.sweep.objective is not None
    assert (spec.sweep.objective.metric, spec.sweep.objective.mode) == ("val/acc 1", "min")
    assert spec.sweep.max_parallel == 3


# ─── canonical text ────────────────────────────────────────────────────────────────────────────


def round_trip(spec: Spec) -> str:
    text = spec_to_yaml(spec)
    again = parse_spec(text, "canonical")
    assert again == spec, text
    assert spec_to_yaml(again) == text
    if spec.sweep is not None and (spec.sweep.random is None or spec.sweep.random.seed is not None):
        assert sweep_points(again) == sweep_points(spec)
    return text


def test_spec_to_yaml_round_trips_each_kind() -> None:
    grid = round_trip(spec_of("  grid: {seed: [2, 1], resources.mem: [4G, '8192']}\n"))
    assert "sweep:\n  grid:\n    seed:\n    - 2\n    - 1\n" in grid
    listed = round_trip(
        spec_of(
            "  list: [{lr: 0.1, seed: 1}, {resources.time: '1:00:00'}]\n"
            "  objective: {metric: acc, mode: max}\n  max_parallel: 2\n"
        )
    )
    assert "\n  list:\n  - lr: 0.1\n" in listed and "points" not in listed
    drawn = round_trip(spec_of(RANDOM.format(seed=9)))
    assert "      lr:\n        loguniform:\n        - 0.0001\n        - 0.1\n" in drawn
    unseeded = round_trip(spec_of(RANDOM.replace("    seed: {seed}\n", "").format()))
    assert "seed" not in unseeded
    round_trip(
        pin_sweep_seed(spec_of(RANDOM.replace("    seed: {seed}\n", "").format()), 2**63 - 1)
    )


def test_a_spec_without_a_sweep_keeps_its_canonical_text() -> None:
    assert "sweep" not in spec_to_yaml(parse_spec(BASE, "t"))


TRICKY = ["yes", "no", "null", "~", "", "1", "1.5", "1e3", "1:30", "a: b", "#x", "- a", "ünï ✓"]


def random_sweep_spec(rng: random.Random) -> Spec:
    def scalar() -> str | int | float | bool:
        kind = rng.randrange(4)
        if kind == 0:
            return rng.choice(TRICKY)
        if kind == 1:
            return rng.randint(-(10**12), 10**12)
        if kind == 2:
            return rng.choice([0.1, -2.5, 1e-05, 1e16, 3.0, 123456.789])
        return rng.random() < 0.5

    keys = [f"k{i}" for i in range(rng.randint(1, 4))]
    kind = rng.randrange(3)
    sweep: dict[str, object]
    if kind == 0:
        sweep = {
            "grid": {k: list({repr(v): v for v in [scalar(), scalar()]}.values()) for k in keys}
        }
    elif kind == 1:
        sweep = {"list": [{k: scalar() for k in keys} for _ in range(rng.randint(1, 4))]}
    else:
        space = {
            "uniform": {"uniform": [-1.5, 2.0]},
            "loguniform": {"loguniform": [1e-05, 0.5]},
            "randint": {"randint": [-3, 9]},
            "choice": {"choice": [scalar(), scalar()]},
        }
        drawn: dict[str, object] = {
            "samples": rng.randint(1, 20),
            "space": {k: space[rng.choice(list(space))] for k in keys},
        }
        if rng.random() < 0.5:
            drawn["seed"] = rng.randint(0, 2**40)
        sweep = {"random": drawn}
    if rng.random() < 0.5:
        sweep["objective"] = {"metric": "val_acc", "mode": rng.choice(["max", "min"])}
    if rng.random() < 0.5:
        sweep["max_parallel"] = rng.randint(1, 10_000)
    data = {"name": "s", "experiment": "e", "command": "true", "sweep": sweep}
    return Spec.model_validate(data)


def test_spec_to_yaml_round_trips_random_sweeps() -> None:
    rng = random.Random(4321)
    for _ in range(300):
        round_trip(random_sweep_spec(rng))


# ─── the example ───────────────────────────────────────────────────────────────────────────────


def test_the_example_sweep_is_a_3x3_grid_over_the_digits_training() -> None:
    spec = load_spec_file(EXAMPLES_DIR / "sweep.yaml")
    digits = load_spec_file(EXAMPLES_DIR / "train-digits.yaml")
    assert spec.sweep is not None and spec.sweep.kind == "grid"
    points = sweep_points(spec)
    assert len(points) == 9
    assert spec.command == digits.command and spec.workdir == digits.workdir
    # each point's params are ones train_digits.py reads
    assert set(spec.sweep.keys) <= set(digits.params)
    assert all(set(s.params) == set(digits.params) for s in point_specs(spec))
    round_trip(spec)


def test_the_public_names() -> None:
    point: Point = {"lr": 0.1}
    assert isinstance(SweepDef.model_validate({"grid": {"lr": [0.1]}}), SweepDef)
    assert point == {"lr": 0.1}
    assert MAX_SWEEP_POINTS == 10_000
