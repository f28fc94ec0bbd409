"""The two test tiers, chosen here so that no test can slip between them.

    offline   tests/unit          no Slurm, no sshd, no MLflow server: runs anywhere in seconds
    cluster   tests/integration   the dev Slurm cluster, sshd and real Unix users (scripts/test)

Every test under tests/integration is marked `cluster` by its directory (below), never by hand,
so a new integration test cannot be forgotten. Which tier runs:

    pytest                                   the offline tier only (the cluster tests are
                                             collected and deselected, and the summary says so)
    pytest -m cluster                        the cluster tier only
    pytest -m "cluster or not cluster"       both: what scripts/test (and so CI) runs
    pytest tests/integration/test_x.py ...   what you name, whatever its tier

Plain `pytest` leaves the cluster tier out only when it chose the paths itself (pyproject's
testpaths, or the directory it was started in) and no `-m` was given: a path or a marker
expression on the command line is obeyed as written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CLUSTER_TIER = Path(__file__).resolve().parent / "integration"


def _offline_only(config: pytest.Config) -> bool:
    implicit_paths = config.args_source is not pytest.Config.ArgsSource.ARGS
    return implicit_paths and not config.option.markexpr


def pytest_report_header(config: pytest.Config) -> str:
    if _offline_only(config):
        return (
            "tier: offline only (tests/unit); the cluster tier runs with -m cluster, "
            'both with -m "cluster or not cluster" (scripts/test)'
        )
    return f"tier: as selected ({config.option.markexpr or 'the paths given'})"


# tryfirst: the marks must be on before pytest's own `-m` selection looks for them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(CLUSTER_TIER):
            item.add_marker(pytest.mark.cluster)
    if not _offline_only(config):
        return
    offline = [item for item in items if item.get_closest_marker("cluster") is None]
    if len(offline) < len(items):
        config.hook.pytest_deselected(
            items=[item for item in items if item.get_closest_marker("cluster") is not None]
        )
        items[:] = offline
