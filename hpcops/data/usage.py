"""Which data versions the lab's runs used, and which of them a gc may remove: pure decisions.

The daemon's database knows every run's versions; the cache knows only objects. A version is
needed while any queued or active run uses it, and a gc never removes a needed version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from hpcops.states import TERMINAL_STATES, RunState


class RunVersions(NamedTuple):
    """One run's data versions, as a gc decides on them: plain data, not the store's table.
    `Store.data_versions()` gives these rows; any (id, state, data_json, last used) tuple does."""

    run_id: int
    state: str  # a RunState's name
    data_json: str | None  # as Run.data_json
    last_used: float  # when the run ended, else started, else was queued (epoch seconds)


@dataclass
class VersionUse:
    md5: str
    paths: set[str] = field(default_factory=set)
    repos: set[str] = field(default_factory=set)
    size: int = 0
    nfiles: int = 0
    runs: list[int] = field(default_factory=list)
    last_used: float = 0.0
    needed: bool = False  # a queued or active run uses it


def version_uses(runs: Iterable[tuple[int, str, str | None, float]]) -> dict[str, VersionUse]:
    """Every data version of these runs (RunVersions rows), with who used it and when last."""
    uses: dict[str, VersionUse] = {}
    for run_id, state, data_json, when in runs:
        if not data_json:
            continue
        ended = RunState(state) in TERMINAL_STATES
        for item in json.loads(data_json):
            use = uses.setdefault(item["md5"], VersionUse(item["md5"]))
            use.paths.add(item["path"])
            use.repos.add(item["repo"])
            use.size = item.get("size") or use.size
            use.nfiles = item.get("nfiles") or use.nfiles
            use.runs.append(run_id)
            use.last_used = max(use.last_used, when)
            use.needed = use.needed or not ended
    return uses


@dataclass(frozen=True)
class GcPlan:
    keep: list[str]
    remove: list[str]
    reasons: dict[str, str]  # md5 -> why it goes


def plan_gc(
    uses: dict[str, VersionUse],
    *,
    now: float,
    older_than_s: float | None,
    max_bytes: int | None,
) -> GcPlan:
    """Versions to remove: those unused for longer than `older_than_s`, then, while the rest is
    over `max_bytes`, the least recently used. Needed versions are always kept."""
    remove: dict[str, str] = {}
    candidates = sorted((u for u in uses.values() if not u.needed), key=lambda u: u.last_used)
    if older_than_s is not None:
        for use in candidates:
            if now - use.last_used > older_than_s:
                remove[use.md5] = f"unused for {(now - use.last_used) / 86400:.1f} days"
    if max_bytes is not None:
        total = sum(u.size for u in uses.values() if u.md5 not in remove)
        for use in candidates:
            if total <= max_bytes:
                break
            if use.md5 not in remove:
                remove[use.md5] = "least recently used while the cache is over --max-size"
                total -= use.size
    keep = [md5 for md5 in uses if md5 not in remove]
    return GcPlan(keep=keep, remove=list(remove), reasons=remove)
