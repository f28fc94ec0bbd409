"""How hpcops' commands read their words: a negative number is a value, not an option.

click takes every word that starts with a dash for an option, so `hpcops priority 12 -5` failed
with "No such option '-5'" and only `hpcops priority 12 -- -5` worked. None of hpcops' options
is named like a number, so a word such as `-5` or `-0.5` can only be a value: `Command` moves
the command's options (with their values) in front of a `--`, and the arguments behind it, in
their order. That uses only click's public interface; an unknown option stays among the options,
so click names it as before ("No such option '-x'").

Every command and group of the CLI is made by `command` and `group` from here, and the commands
that take a run, a sweep or a pipeline read it with `RUN_OR_SWEEP`: `12` is run 12, `s7` sweep
7, `p3` pipeline 3.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import click

_SWEEP = re.compile(r"[sS]([1-9][0-9]{0,18})")
_PIPELINE = re.compile(r"[pP]([1-9][0-9]{0,18})")
_MAX_ID = 2**63 - 1  # the API's bound on ids (SQLite's largest integer)
_NEGATIVE_NUMBER = re.compile(r"-(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def negative_numbers_as_arguments(
    args: Sequence[str], params: Sequence[click.Parameter]
) -> list[str]:
    """`args` with every negative number that is not an option's value read as an argument.

    Unchanged when no word is a negative number, or the command takes no arguments (then the
    number is an unknown option, as click says).
    """
    if not any(_NEGATIVE_NUMBER.fullmatch(arg) for arg in args):
        return list(args)
    if not any(isinstance(param, click.Argument) for param in params):
        return list(args)
    values_taken: dict[str, int] = {}  # option name -> how many words follow it
    for param in params:
        if isinstance(param, click.Option):
            taken = 0 if param.is_flag or param.count else param.nargs
            for name in (*param.opts, *param.secondary_opts):
                values_taken[name] = taken
    options: list[str] = []
    arguments: list[str] = []
    rest = list(args)
    while rest:
        word = rest.pop(0)
        if word == "--":
            arguments += rest
            break
        if word in values_taken:
            taken = values_taken[word]
            options += [word, *rest[:taken]]
            del rest[:taken]
        elif word.startswith("-") and len(word) > 1 and not _NEGATIVE_NUMBER.fullmatch(word):
            options.append(word)  # --name=value, or an unknown option click will name
        else:
            arguments.append(word)
    return [*options, "--", *arguments]


class Command(click.Command):
    """A click command whose arguments may be negative numbers."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, negative_numbers_as_arguments(args, self.get_params(ctx)))


class Group(click.Group):
    """A click group whose commands are `Command`s and whose subgroups are `Group`s."""

    command_class = Command
    group_class = type  # subgroups made with @group.group() are of this same class


def command(name: str | None = None, **attrs: Any) -> Callable[[Callable[..., Any]], Command]:
    """`@click.command`, making a `Command`."""
    return click.command(name, cls=Command, **attrs)


def group(name: str | None = None, **attrs: Any) -> Callable[[Callable[..., Any]], Group]:
    """`@click.group`, making a `Group`."""
    return click.group(name, cls=Group, **attrs)


class RunOrSweep(click.ParamType[int | str]):
    """A run id (`12`, as an int), a sweep id (`s7`) or a pipeline id (`p3`), these two as the
    text the API takes ("s7", "p3")."""

    name = "run_or_sweep"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        target: int | str | None = None
        if text.isdigit() and 1 <= int(text) <= _MAX_ID:
            target = int(text)
        for prefix, pattern in (("s", _SWEEP), ("p", _PIPELINE)):
            found = pattern.fullmatch(text)
            if found is not None and int(found.group(1)) <= _MAX_ID:
                target = f"{prefix}{int(found.group(1))}"
        if target is None and text.removeprefix("-").isdigit():
            self.fail(
                f"{text} is not a run id: a run id is an integer from 1 to {_MAX_ID}", param, ctx
            )
        if target is None:
            self.fail(
                f"{text!r} is neither a run id (a positive integer, e.g. 12), a sweep id "
                "(s and a positive integer, e.g. s7) nor a pipeline id (p and a positive "
                "integer, e.g. p3)",
                param,
                ctx,
            )
        return target


RUN_OR_SWEEP = RunOrSweep()
