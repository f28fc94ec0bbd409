"""The malformed-spec corpus (tests/fixtures/bad_specs) as the spec tests read it: test_spec.py,
test_spec_retry.py and test_spec_sweep.py each check their own files with these, rather than a
copy of the reading and the checks in each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hpcops.errors import SpecError
from hpcops.spec import load_spec_file

BAD_SPECS_DIR = Path(__file__).parent.parent / "fixtures" / "bad_specs"

# What a refusal must never show the user: the validation library's own words.
_LEAKS = ("pydantic", "Input should", "Value error", "Traceback")


def bad_spec_files(starting: tuple[str, ...] = (), *, besides: tuple[str, ...] = ()) -> list[str]:
    """The corpus's file names starting with one of `starting` (any, if none), less those
    starting with one of `besides`, sorted."""
    return sorted(
        p.name
        for p in BAD_SPECS_DIR.iterdir()
        if (not starting or p.name.startswith(starting))
        and not (besides and p.name.startswith(besides))
    )


def problems(action: Callable[..., object]) -> list[tuple[str, str]]:
    """The (location, message) of each problem of the SpecError that `action` raises."""
    with pytest.raises(SpecError) as info:
        action()
    return [(p.location, p.message) for p in info.value.problems]


def assert_problem(found: list[tuple[str, str]], location: str, phrase: str) -> None:
    assert any(loc == location and phrase in msg for loc, msg in found), (
        f"no problem at {location!r} saying {phrase!r} in: {found}"
    )


def assert_refused(filename: str, location: str, phrase: str) -> None:
    """The corpus file is refused, naming itself, with a problem at `location` saying `phrase`,
    in the daemon's words and not the validation library's."""
    path = BAD_SPECS_DIR / filename
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    error = info.value
    assert error.source == str(path)
    assert_problem([(p.location, p.message) for p in error.problems], location, phrase)
    text = str(error)
    for leak in _LEAKS:
        assert leak not in text
