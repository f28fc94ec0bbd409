"""What `hpcops submit` prints for what it queued, without click: the click command
(`cli/specs.py`) and the fast entry (`cli/fast.py`) print the same words from here."""

from __future__ import annotations

import json

from hpcops.describe import id_ranges

TYPE_CHECKING = False  # the fast entry imports this: typing is for mypy only (hpcops/home.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from os import PathLike
    from typing import Any


class _Asked:
    """Whether this process has asked the daemon already, and been sent to the full path: the
    fast entry hands such a call to the click command, which must not ask the same again (on a
    cluster without a master connection every request is an SSH login, perhaps a second factor)."""

    full_path_only = False


def quick_submit(
    specs: Sequence[str | PathLike[str]], send: Callable[[list[dict[str, str]]], Any]
) -> list[dict[str, Any]] | None:
    """submit's answer per spec, for specs the daemon can take as they are (no code to ship, no
    schedule: block to mention, no pipeline): `send` gives the daemon their text
    (`specfile.spec_file_item`), which it validates anyway, and this process imports neither
    pydantic nor the code-shipping modules. None when the full path must run: a spec needs it,
    as read here or as the daemon found (NeedsFullPath). A spec the daemon finds invalid is
    InvalidInput, every spec's problems in one message, as the full path words them: the call
    ends there, sent once. The fast entry and the click command both submit through here."""
    from hpcops.errors import NeedsFullPath
    from hpcops.specfile import spec_file_item

    if _Asked.full_path_only:
        return None
    items = [spec_file_item(path) for path in specs]
    if None in items:
        return None
    try:
        return per_spec(send([item for item in items if item is not None]))
    except NeedsFullPath:
        _Asked.full_path_only = True
        return None


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
