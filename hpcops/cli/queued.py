"""What `hpcops submit` prints for what it queued, without click: the click command
(`cli/specs.py`) and the fast entry (`cli/fast.py`) print the same words from here."""

from __future__ import annotations

import json

from hpcops.describe import id_ranges

TYPE_CHECKING = False  # the fast entry imports this: typing is for mypy only (hpcops/home.py)
if TYPE_CHECKING:
    from typing import Any


def per_spec(result: dict[str, Any]) -> list[dict[str, Any]]:
    """submit's answer, one entry per spec in order: a run, or a sweep with its points' runs."""
    sweeps = {s["id"]: s for s in result.get("sweeps") or []}
    entries: list[dict[str, Any]] = []
    for run in result["runs"]:
        ref = run.get("sweep")
        if ref is None:
            entries.append({"type": "run", **run})
        elif ref in sweeps:
            entries.append({"type": "sweep", "state": run["state"], **sweeps.pop(ref)})
    return entries


def sweep_queued(sweep: dict[str, Any]) -> str:
    """`sweep s7: 9 points (runs 12-20)`."""
    return f"sweep {sweep['id']}: {sweep['n_points']} points (runs {id_ranges(sweep['runs'])})"


def queued_lines(queued: list[dict[str, Any]], as_json: bool) -> list[str]:
    """One spec: its run id alone (scripts read it: `run=$(hpcops submit x.yaml)`), or `queued
    sweep s7: ...`; several: `ID<TAB>name` a line. --json: the entry, or the list of them."""
    if as_json:
        return [json.dumps(queued[0] if len(queued) == 1 else queued, indent=2)]
    lines = []
    for entry in queued:
        if entry["type"] == "sweep":
            text = sweep_queued(entry)
            lines.append(f"queued {text}" if len(queued) == 1 else f"{entry['id']}\t{text}")
        else:
            one = str(entry["id"])
            lines.append(one if len(queued) == 1 else f"{one}\t{entry['name']}")
    return lines
