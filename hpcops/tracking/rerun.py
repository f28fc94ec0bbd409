"""`hpcops rerun`: a new spec from a recorded one, the same unless `--set` says otherwise (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hpcops.errors import InvalidInput
from hpcops.yamlio import SPEC, YamlProblems, read_yaml

# What a rerun may change. The command, workdir and template stay as recorded: a rerun runs
# the same code; a different experiment is a new spec.
_SETTABLE = re.compile(
    r"(?P<section>params|tags)\.(?P<key>[A-Za-z_][A-Za-z0-9_.-]{0,63})"
    r"|resources\.(?P<resource>partition|nodes|ntasks|cpus_per_task|mem|gpus|gpu_type|time|qos)"
    r"|(?P<top>priority|name)"
)
SETTABLE_HELP = "params.NAME, tags.NAME, resources.FIELD, priority or name"
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?")


def typed_value(text: str, like: object = None) -> str | int | float | bool:
    """A --set value as the spec would hold it: YAML 1.2's plain scalars (true/false, integers,
    numbers), else text. An integer given for a number stays a number (lr=1 -> 1.0)."""
    if text in ("true", "false"):
        return text == "true"
    if _INT.fullmatch(text):
        return float(text) if isinstance(like, float) else int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`--set KEY=VALUE` items as a mapping; each key checked against what a rerun may change."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise InvalidInput(f"--set {item!r}: write KEY=VALUE, e.g. --set params.lr=0.01")
        check_key(key)
        out[key] = value
    return out


def check_key(key: str) -> None:
    if not _SETTABLE.fullmatch(key):
        raise InvalidInput(f"--set {key!r}: a rerun may set {SETTABLE_HELP}, e.g. params.lr")


def apply_overrides(spec_yaml: str, overrides: Mapping[str, str]) -> dict[str, Any]:
    """The recorded spec as data, with the overrides applied; parse_spec validates the result.

    The recorded text comes from MLflow, which anyone with access to the tracking server can
    write: it is read by hpcops' one YAML reader, as a spec file is (at most 1 MiB, no anchors or
    aliases, so a few hundred bytes cannot expand into gigabytes, YAML 1.2 scalars).
    """
    try:
        data = read_yaml(spec_yaml, SPEC)
    except YamlProblems as exc:
        raise InvalidInput(f"the recorded spec cannot be read: {_first(exc)}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the recorded spec is not a mapping")
    for key, text in overrides.items():
        check_key(key)
        head, _, rest = key.partition(".")
        if not rest:
            data[head] = typed_value(text, data.get(head))
            continue
        section = data.get(head)
        if not isinstance(section, dict):
            section = {}
            data[head] = section
        section[rest] = typed_value(text, section.get(rest)) if head != "tags" else text
    return data


def _first(exc: YamlProblems) -> str:
    problem = exc.problems[0]
    more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
    return (
        f"{problem.location}: {problem.message}{more}"
        if problem.location
        else problem.message + more
    )
