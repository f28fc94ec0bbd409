"""Schedules that fire when their DVC-tracked data changes, decided by pure functions.

Every check interval the daemon resolves the spec's moving references (a code branch, a data
target's rev) through the lab's code mirror and reads each target's md5 from its .dvc file,
queueing nothing. `decide` then compares those versions with what the schedule's earlier
firings used: the run of its latest submitted firing (the run's own record of what it staged,
so a commit that landed between the check and the firing is judged by what really ran).

A check that finds nothing new records nothing but the schedule's "last checked" fields: a
5-minute check would otherwise add 288 rows a day to the firings table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hpcops.cadence import MAX_EVERY_S

if TYPE_CHECKING:
    from hpcops.spec import Spec

DEFAULT_CHECK_EVERY_S: Final = 300
MAX_CHECK_EVERY_S: Final = MAX_EVERY_S
_SHORT_MD5: Final = 12


@dataclass(frozen=True)
class TargetVersion:
    """One data target's version: its path in the repository and DVC's md5 of its content."""

    path: str
    md5: str


Versions = tuple[TargetVersion, ...]


def versions_from_data_json(text: str | None) -> Versions | None:
    """The versions a run recorded (Run.data_json, Firing.data_json); None when none were."""
    if not text:
        return None
    return tuple(TargetVersion(item["path"], item["md5"]) for item in json.loads(text))


@dataclass(frozen=True)
class CheckDecision:
    """Whether a check fires, and its result as `schedule ls/show` print it: a short word, then
    the detail after ': '."""

    fire: bool
    result: str

    @property
    def summary(self) -> str:
        return self.result.partition(": ")[0]


def _short(versions: Versions) -> str:
    return ", ".join(f"{v.path} {v.md5[:_SHORT_MD5]}" for v in versions)


def _changes(before: Versions, now: Versions) -> str:
    if [v.path for v in before] != [v.path for v in now]:
        return f"{_short(before)} -> {_short(now)}"
    return ", ".join(
        f"{new.path} {old.md5[:_SHORT_MD5]} -> {new.md5[:_SHORT_MD5]}"
        for old, new in zip(before, now, strict=True)
        if old.md5 != new.md5
    )


def decide(
    current: Versions,
    *,
    fired: Versions | None,
    failed: Versions | None,
    active_run: int | None,
    active_state: str | None,
    allow_overlap: bool,
) -> CheckDecision:
    """Fire or not, given the data versions now and those of earlier firings.

    fired:  the versions the run of the latest submitted firing staged (None: never fired).
    failed: the versions of a firing that ended in an error after it (None: there was none).
            Not retried every interval (each would be another error row): the next change of
            the data, or `schedule run-now`, tries again.
    While a run of an earlier firing is active and overlap is not allowed, a change waits for
    it to end instead of recording a skip on every check; the change is still there after.
    """
    if fired is not None and current == fired:
        return CheckDecision(False, f"no change: {_short(current)}")
    if failed is not None and current == failed:
        return CheckDecision(
            False,
            f"not retried: the firing for {_short(current)} failed (see `schedule show`); the "
            "next data change or `schedule run-now` tries again",
        )
    what = "first version" if fired is None else "changed"
    detail = _short(current) if fired is None else _changes(fired, current)
    if active_run is not None and not allow_overlap:
        return CheckDecision(
            False,
            f"waiting: {what} {detail}; fires once run {active_run} ({active_state}) of an "
            "earlier firing has ended",
        )
    return CheckDecision(True, f"{what}: {detail}")


def check_check_every_s(value: object, min_s: int) -> int:
    """The check interval of an on-data-change schedule, in seconds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"a check interval is a whole number of seconds, not {value!r}")
    if not min_s <= value <= MAX_CHECK_EVERY_S:
        raise ValueError(
            f"{value} s is outside {min_s}-{MAX_CHECK_EVERY_S} s (each check fetches the "
            "branch; the shortest interval is the config's schedules.min_interval_s)"
        )
    return value


def _is_full_commit(rev: str) -> bool:
    from hpcops.names import FULL_COMMIT_RE

    return FULL_COMMIT_RE.fullmatch(rev) is not None


def watch_problem(spec: Spec) -> str | None:
    """Why an on-data-change schedule of this spec could never see a change, or None.

    Its data must come from something that moves: the code's branch (targets without a repo
    are read at the code's commit) or a target's own repo at a branch or tag."""
    if not spec.data:
        return (
            "the spec has no data: targets to watch; add e.g. data: [{path: data/train}] "
            "(a DVC-tracked path), or schedule it with --cron/--every"
        )
    for target in spec.data:
        if target.repo is not None:
            if target.rev is None or not _is_full_commit(target.rev):
                return None
        elif spec.code is not None and not _is_full_commit(spec.code.commit):
            return None
    return (
        "every data target is read at a fixed commit (code.commit and each data[].rev is a "
        "full commit id), so its data can never change; name a branch instead, e.g. "
        "code: {repo: /labs/nlp/repo, commit: main}"
    )
