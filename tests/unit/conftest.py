"""Fixtures shared by the spec and render tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hpcops.render import JobContext
from hpcops.rundir import RunDir

ContextFactory = Callable[..., JobContext]


def _make_context(run_dir: Path, **overrides: object) -> JobContext:
    fields: dict[str, object] = {
        "run_id": "r-000042",
        "token": "0123456789abcdef",
        "run_dir": RunDir(run_dir),
        "account": "vision-lab",
        "default_partition": "cpu",
        "lab": "vision-lab",
    }
    fields.update(overrides)
    return JobContext(**fields)  # type: ignore[arg-type]


@pytest.fixture
def make_context() -> ContextFactory:
    """make_context(run_dir, **overrides): a JobContext with fixed, valid defaults."""
    return _make_context


@pytest.fixture
def golden_context() -> JobContext:
    """The context every golden script is rendered with: fixed, so the scripts are too."""
    return _make_context(Path("/scratch/vision-lab/hpcops/runs/r-000042"))
