"""A sweep's points, and each point's own spec: pure functions of a Spec with a `sweep:` block.

    sweep_points(spec)        the points, in index order (deterministic)
    point_spec(spec, point)   the spec one point runs: sweep removed, its values merged, validated
    pin_sweep_seed(spec, s)   a random sweep without a seed gets one (intake records it)
    check_sweep_points(spec)  every point valid, or one SpecError naming the sweep's fields

A grid's points are the cartesian product of its lists, in the keys' order, the last key varying
fastest. A random sweep draws `samples` points from random.Random(seed) alone (never the global
generator): for each point, one value per key in the space's order. Python promises that
random() gives the same sequence for the same integer seed in every version (uniform and
loguniform draw through it); randint and choice go through randrange, unchanged since Python 3.2.
The drawn points are recorded with the sweep besides, so a rerun never depends on drawing again.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from hpcops.errors import FieldProblem, SpecError
from hpcops.spec.fields import MAX_SWEEP_POINTS, MAX_SWEEP_SEED, RESOURCE_PREFIX, ParamValue
from hpcops.spec.messages import validate
from hpcops.spec.model import Spec
from hpcops.spec.sweepdef import Distribution, SweepDef
from hpcops.yamlio import MAX_PROBLEMS

Point: TypeAlias = dict[str, ParamValue]

_NO_SEED: Final = "a random sweep without a seed cannot be expanded; pin one first (pin_sweep_seed)"


def _sweep_of(spec: Spec) -> SweepDef:
    if spec.sweep is None:
        raise ValueError(f"the spec {spec.name!r} has no sweep")
    if spec.sweep.n_points > MAX_SWEEP_POINTS:  # a model_copy skips validation
        raise ValueError(f"{spec.sweep.n_points:,} points; at most {MAX_SWEEP_POINTS:,}")
    return spec.sweep


def _draw(dist: Distribution, rng: random.Random) -> ParamValue:
    if dist.uniform is not None:
        lo, hi = dist.uniform
        return float(rng.uniform(lo, hi))
    if dist.loguniform is not None:
        lo, hi = dist.loguniform
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return float(min(max(value, lo), hi))  # exp(log(x)) may round past an end
    if dist.randint is not None:
        lo_int, hi_int = dist.randint
        return rng.randint(lo_int, hi_int)
    choices = dist.choice or []
    return choices[rng.randrange(len(choices))]


def sweep_points(spec: Spec) -> list[Point]:
    """The sweep's points in index order; the same spec always gives the same list.

    Raises ValueError for a spec without a sweep, and for a random sweep without a seed (the
    caller pins one first: pin_sweep_seed).
    """
    sweep = _sweep_of(spec)
    if sweep.grid is not None:
        keys = list(sweep.grid)
        combos = itertools.product(*sweep.grid.values())
        return [dict(zip(keys, values, strict=True)) for values in combos]
    if sweep.points is not None:
        return [dict(point) for point in sweep.points]
    assert sweep.random is not None
    if sweep.random.seed is None:
        raise ValueError(_NO_SEED)
    # A search, not a secret: reproducible from its recorded seed by design.
    rng = random.Random(sweep.random.seed)  # noqa: S311
    space = sweep.random.space
    return [
        {key: _draw(dist, rng) for key, dist in space.items()} for _ in range(sweep.random.samples)
    ]


def pin_sweep_seed(spec: Spec, seed: int) -> Spec:
    """The spec with `seed` as its random sweep's seed if it has none; any other spec as it is."""
    sweep = spec.sweep
    if sweep is None or sweep.random is None or sweep.random.seed is not None:
        return spec
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SWEEP_SEED:
        raise ValueError(f"a sweep's seed is an integer from 0 to {MAX_SWEEP_SEED}; got {seed!r}")
    drawn = sweep.random.model_copy(update={"seed": seed})
    return spec.model_copy(update={"sweep": sweep.model_copy(update={"random": drawn})})


# ─── one point's spec ──────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Where:
    """Where a point's values come from in the sweep block, for messages."""

    point: str  # the point as a whole: sweep.grid, sweep.list[3], sweep.random
    keys: Mapping[str, str]  # a key -> its value's place: sweep.grid.lr[2], sweep.list[3].lr
    drawn: str = ""  # a random point: "point 4 drew {lr: 0.5}"

    def said(self, message: str) -> str:
        return f"{self.drawn}: {message}" if self.drawn else message


def _base_data(spec: Spec) -> dict[str, Any]:
    data = spec.model_dump(mode="python", exclude={"sweep"})
    data.pop("schedule", None)  # a sweep has none (refused), and a point is a plain run
    return data


def _merged(base: Mapping[str, Any], point: Mapping[str, ParamValue]) -> dict[str, Any]:
    data = dict(base)
    params = dict(base["params"])
    resources = dict(base["resources"])
    for key, value in point.items():
        if key.startswith(RESOURCE_PREFIX):
            resources[key.removeprefix(RESOURCE_PREFIX)] = value
        else:
            params[key] = value
    data["params"] = params
    data["resources"] = resources
    return data


def _field_of(location: str) -> str | None:
    """The sweep key a point's problem is about: `params.lr` -> lr, `resources.mem` as is."""
    if location.startswith("params."):
        return location.removeprefix("params.")
    if location.startswith(RESOURCE_PREFIX):
        return location
    return None


def _shown(point: Mapping[str, ParamValue]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in point.items()) + "}"


def _moved(problems: list[FieldProblem], point: Point, where: _Where) -> list[FieldProblem]:
    """A point's problems, each at the sweep field its value came from."""
    moved = []
    for problem in problems:
        key = _field_of(problem.location)
        if key is not None and key in where.keys and key in point:
            moved.append(FieldProblem(where.keys[key], where.said(problem.message)))
            continue
        # A resource's problem depends only on the point's resources: name those.
        shown = point
        if problem.location.startswith(RESOURCE_PREFIX):
            shown = {k: v for k, v in point.items() if k.startswith(RESOURCE_PREFIX)}
        what = f"makes {problem.location or 'the spec'} invalid: {problem.message}"
        who = f"{where.drawn}, which" if where.drawn else _shown(shown)
        moved.append(FieldProblem(where.point, f"{who} {what}"))
    return moved


def _validated(
    base: Mapping[str, Any], point: Point, where: Callable[[], _Where], source: str
) -> Spec:
    """The point's spec; `where` is asked only when there is a problem to place."""
    try:
        return validate(_merged(base, point), source)
    except SpecError as exc:
        raise SpecError(source, _moved(exc.problems, point, where())) from None


def _where_of(sweep: SweepDef, point: Mapping[str, ParamValue]) -> _Where:
    """For a point given alone: the place of each of its values, found in the sweep block."""
    if sweep.grid is not None:
        keys = {}
        for key, values in sweep.grid.items():
            found = [i for i, v in enumerate(values) if key in point and _same(v, point[key])]
            keys[key] = f"sweep.grid.{key}" + (f"[{found[0]}]" if found else "")
        return _Where("sweep.grid", keys)
    if sweep.points is not None:
        index = next(
            (
                i
                for i, candidate in enumerate(sweep.points)
                if candidate.keys() == point.keys()
                and all(_same(v, point[k]) for k, v in candidate.items())
            ),
            None,
        )
        here = "sweep.list" if index is None else f"sweep.list[{index}]"
        return _Where(here, {key: f"{here}.{key}" for key in point})
    return _Where("sweep.random", {key: f"sweep.random.space.{key}" for key in point})


def _same(a: ParamValue, b: ParamValue) -> bool:
    return type(a) is type(b) and a == b


def point_spec(spec: Spec, point: Mapping[str, ParamValue], *, source: str = "") -> Spec:
    """The spec one point of the sweep runs: `sweep` removed, the point's parameter keys merged
    over `params` and its `resources.<field>` keys over `resources`, validated as any spec is.

    A bad value raises SpecError whose problem names the sweep field it came from, e.g.
    `sweep.grid.resources.mem[1]` or `sweep.list[3].resources.mem`; `source` names the spec
    (default: its name).
    """
    sweep = _sweep_of(spec)
    given = dict(point)
    return _validated(_base_data(spec), given, lambda: _where_of(sweep, given), source or spec.name)


def point_specs(spec: Spec, *, source: str = "") -> list[Spec]:
    """point_spec for every point of the sweep, in index order (the spec is read once)."""
    sweep = _sweep_of(spec)
    base = _base_data(spec)
    return [
        _validated(base, point, where, source or spec.name)
        for point, where in _placed_points(sweep, sweep_points(spec))
    ]


# ─── every point checked when the spec is read ─────────────────────────────────────────────────


def _where_at(sweep: SweepDef, index: int, point: Point) -> _Where:
    """The place of each value of the sweep's point `index`."""
    if sweep.grid is not None:
        keys: dict[str, str] = {}
        rest = index
        for key, values in reversed(sweep.grid.items()):  # the last key varies fastest
            rest, i = divmod(rest, len(values))
            keys[key] = f"sweep.grid.{key}[{i}]"
        return _Where("sweep.grid", keys)
    if sweep.points is not None:
        here = f"sweep.list[{index}]"
        return _Where(here, {key: f"{here}.{key}" for key in point})
    keys = {key: f"sweep.random.space.{key}" for key in point}
    return _Where("sweep.random", keys, f"point {index} drew {_shown(point)}")


def _placed_points(
    sweep: SweepDef, points: list[Point]
) -> Iterator[tuple[Point, Callable[[], _Where]]]:
    """Each point (index order) with how to find the place of its values, for a message."""
    for index, point in enumerate(points):
        yield point, functools.partial(_where_at, sweep, index, point)


def _as_is(where: _Where) -> _Where:
    return where


def _candidates(sweep: SweepDef) -> Iterator[tuple[Point, Callable[[], _Where]]]:
    """A random sweep without a seed yet: every combination of the values its resources can
    take at their ends (a choice's every value, a range's two ends), the params at one of them.
    The points it will draw are checked once it has a seed (at submission)."""
    assert sweep.random is not None
    space = sweep.random.space
    resource_keys = [k for k in space if k.startswith(RESOURCE_PREFIX)]
    params = {k: space[k].args[0] for k in space if k not in resource_keys}
    combos = itertools.product(*(space[k].args for k in resource_keys))
    for values in itertools.islice(combos, MAX_SWEEP_POINTS):
        point = {**params, **dict(zip(resource_keys, values, strict=True))}
        keys = {key: f"sweep.random.space.{key}" for key in point}
        where = _Where("sweep.random", keys, f"a point could draw {_shown(point)}")
        yield point, functools.partial(_as_is, where)


def check_sweep_points(spec: Spec, source: str = "") -> None:
    """Raise SpecError unless every point of the spec's sweep makes a valid spec.

    A point's params are already known good (each value is checked in the sweep block, and the
    keys with the spec's params in Spec), so one full validation per distinct combination of
    resource values covers every point. A random sweep without a seed has its ranges' ends and
    every choice checked instead.
    """
    sweep = spec.sweep
    if sweep is None:
        return
    source = source or spec.name
    if sweep.random is not None and sweep.random.seed is None:
        placed: Iterator[tuple[Point, Callable[[], _Where]]] = _candidates(sweep)
    else:
        placed = _placed_points(sweep, sweep_points(spec))
    base = _base_data(spec)
    checked: set[tuple[tuple[str, type, ParamValue], ...]] = set()
    problems: dict[str, FieldProblem] = {}  # the first at each place is enough
    failed = 0
    for point, where in placed:
        resources = tuple(
            (k, type(v), v) for k, v in point.items() if k.startswith(RESOURCE_PREFIX)
        )
        if resources in checked:
            continue
        checked.add(resources)
        try:
            _validated(base, point, where, source)
        except SpecError as exc:
            for problem in exc.problems:
                problems.setdefault(problem.location, problem)
            failed += 1
            if failed >= MAX_PROBLEMS:  # enough to say what is wrong
                break
    if problems:
        raise SpecError(source, list(problems.values())[:MAX_PROBLEMS])
