"""Negative numbers are values, not options: `hpcops priority 12 -5` needs no `--`.

click reads every word that starts with a dash as an option, so before the CLI told it otherwise
`hpcops priority 12 -5` failed with "No such option '-5'" (exit 2). The daemon is faked: these
tests check what the CLI sends, not what the daemon does with it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hpcops.cli.context import Context
from hpcops.cli.main import cli
from hpcops.cli.parsing import negative_numbers_as_arguments


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every request the CLI makes; each is answered with a message and a run id."""
    made: list[tuple[str, dict[str, Any]]] = []

    def call(self: Context, method: str, **params: Any) -> Any:
        made.append((method, params))
        return {"message": f"{method} ok", "id": 13}

    monkeypatch.setattr(Context, "call", call)
    return made


def _run(*argv: str) -> Result:
    return CliRunner().invoke(cli, list(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ("priority", "12", "-5"),
        ("priority", "12", "-5", "--json"),
        ("priority", "--json", "12", "-5"),
        ("priority", "12", "--json", "-5"),
    ],
)
def test_a_negative_priority_is_a_value(
    calls: list[tuple[str, dict[str, Any]]], argv: tuple[str, ...]
) -> None:
    result = _run(*argv)
    assert result.exit_code == 0, result.output
    assert calls == [("priority", {"run": 12, "priority": -5})]
    if "--json" in argv:
        assert json.loads(result.output)["message"] == "priority ok"
    else:
        assert result.output == "priority ok\n"


def test_the_lowest_priority_is_allowed_and_one_below_it_is_named(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    assert _run("priority", "12", "-1000").exit_code == 0
    assert calls == [("priority", {"run": 12, "priority": -1000})]
    result = _run("priority", "12", "-1001")
    assert result.exit_code == 2
    assert "-1001 is not in the range -1000<=x<=1000" in result.output
    assert len(calls) == 1


def test_a_negative_quota_is_refused_with_what_is_allowed(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    result = _run("quota", "set", "lab", "gpus", "-1")
    assert result.exit_code == 2
    assert "No such option" not in result.output
    assert (
        "hpcops: a quota cannot be negative (-1): give 0 to allow none, or 'none' for no limit"
        in (result.output)
    )
    assert calls == []


def test_a_quota_of_a_number_or_none_still_goes_through(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    assert _run("quota", "set", "lab", "gpus", "4").exit_code == 0
    assert _run("quota", "set", "per_user", "cpus", "none").exit_code == 0
    assert calls == [
        ("quota_set", {"scope": "lab", "resource": "gpus", "value": 4}),
        ("quota_set", {"scope": "per_user", "resource": "cpus", "value": None}),
    ]


@pytest.mark.parametrize(
    ("argv", "sent"),
    [
        (("--set", "params.x=-1"), {"params.x": "-1"}),
        (("--set=params.lr=-0.5",), {"params.lr": "-0.5"}),
        (
            ("--set", "priority=-5", "--set", "params.b=-1e-3"),
            {"priority": "-5", "params.b": "-1e-3"},
        ),
    ],
)
def test_a_negative_value_for_a_rerun(
    calls: list[tuple[str, dict[str, Any]]], argv: tuple[str, ...], sent: dict[str, str]
) -> None:
    result = _run("rerun", "12", *argv)
    assert result.exit_code == 0, result.output
    assert calls == [("rerun", {"run": 12, "set": sent})]


def test_a_negative_run_id_gets_the_range_message(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    result = _run("cancel", "-5")
    assert result.exit_code == 2
    assert "-5 is not a run id: a run id is an integer from 1 to" in result.output
    assert calls == []


def test_a_negative_option_value_is_read_as_before(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    result = _run("logs", "12", "--tail", "-5")
    assert result.exit_code == 2
    assert "-5 is not in the range x>=0" in result.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("priority", "12", "-x"), "No such option '-x'"),
        (("priority", "12", "-5", "-x"), "No such option '-x'"),
        (("priority", "12", "--jsn"), "No such option '--jsn'. Did you mean '--json'?"),
        (("ls", "-5"), "No such option '-5'"),
        (("priority", "12", "-5", "7"), "Got unexpected extra argument (7)"),
    ],
)
def test_unknown_options_are_named_as_before(
    calls: list[tuple[str, dict[str, Any]]], argv: tuple[str, ...], message: str
) -> None:
    result = _run(*argv)
    assert result.exit_code == 2
    assert message in result.output
    assert calls == []


def test_a_double_dash_still_works(calls: list[tuple[str, dict[str, Any]]]) -> None:
    assert _run("priority", "12", "--", "-5").exit_code == 0
    assert calls == [("priority", {"run": 12, "priority": -5})]


def test_a_negative_rerun_source_is_named_as_a_run_id(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    result = _run("rerun", "-5")
    assert result.exit_code == 2
    assert "hpcops: RUN '-5': a run id is a positive integer" in result.output
    assert calls == []


def test_options_and_their_values_go_in_front_of_the_arguments() -> None:
    logs = cli.commands["logs"].params
    # --tail's value stays its own, negative or not.
    assert negative_numbers_as_arguments(["12", "--tail", "-5", "-f"], logs) == [
        "--tail",
        "-5",
        "-f",
        "--",
        "12",
    ]
    assert negative_numbers_as_arguments(["12", "--tail", "5"], logs) == ["12", "--tail", "5"]
    priority = cli.commands["priority"].params
    assert negative_numbers_as_arguments(["12", "-0.5", "--json"], priority) == [
        "--json",
        "--",
        "12",
        "-0.5",
    ]
    assert negative_numbers_as_arguments(["--json=x", "-5", "--", "-h"], priority) == [
        "--json=x",
        "--",
        "-5",
        "-h",
    ]
