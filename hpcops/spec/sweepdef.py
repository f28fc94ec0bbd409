"""A sweep's block (`sweep:`) as pydantic models: a grid, a list or a random search of points,
an objective and a parallelism cap. Its points are computed in sweep.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    model_validator,
)

from hpcops.spec.blocks import MODEL_CONFIG, CheckedParamValue, Resources
from hpcops.spec.fields import (
    MAX_SWEEP_PARALLEL,
    MAX_SWEEP_POINTS,
    MAX_SWEEP_SEED,
    ParamValue,
    check_metric,
    count_text,
    distribution_name,
    in_range,
    optional_range,
    sweep_key,
)

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

    model_config = MODEL_CONFIG

    uniform: Annotated[list[float] | None, AfterValidator(_bounds("uniform", "[0.0, 0.5]"))] = None
    loguniform: Annotated[
        list[float] | None, AfterValidator(_bounds("loguniform", "[1.0e-4, 1.0e-1]"))
    ] = None
    randint: Annotated[list[int] | None, AfterValidator(_bounds("randint", "[1, 8]"))] = None
    choice: Annotated[list[CheckedParamValue] | None, AfterValidator(_choices)] = None

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

    model_config = MODEL_CONFIG

    samples: Annotated[int, AfterValidator(in_range(1, MAX_SWEEP_POINTS, "samples: 50"))]
    seed: Annotated[int | None, AfterValidator(optional_range(0, MAX_SWEEP_SEED, "seed: 0"))] = None
    space: Annotated[dict[_SweepKey, _Distribution], AfterValidator(_space_not_empty)]


class SweepObjective(BaseModel):
    """The MLflow metric that ranks a sweep's points (its last value), and which way is better."""

    model_config = MODEL_CONFIG

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

    model_config = MODEL_CONFIG

    grid: Annotated[
        dict[_SweepKey, Annotated[list[CheckedParamValue], AfterValidator(_axis)]] | None,
        BeforeValidator(_grid_fits),
        AfterValidator(_grid_not_empty),
    ] = None
    points: Annotated[
        list[dict[_SweepKey, CheckedParamValue]] | None,
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
