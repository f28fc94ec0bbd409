"""How the CLI shows things to people: tables that fit the terminal, readable times and sizes."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def local_time(iso: str | None) -> str:
    """An API timestamp (UTC) in the user's local time, short."""
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    if moment.date() == datetime.now().astimezone().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def short_time(iso: str | None) -> str:
    """As local_time, in at most 11 characters: `14:03:12` today, else `12-05 14:03`."""
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    if moment.date() == datetime.now().astimezone().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M")


def terminal_width() -> int:
    """The terminal's columns; 200 when the output is not a terminal (a pipe, a file)."""
    return shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else 200


MIN_WRAPPED = 20  # a wrapped column narrower than this goes under its row instead


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    shrink: int | Sequence[int] = -1,
    wrap: int | None = None,
) -> str:
    """Columns padded to fit; when the terminal is narrow, column `shrink` is cut with '…' (a
    sequence: each in turn, down to its header's width, until the table fits).

    With `wrap`, that column (a sentence: why) is never cut: it is wrapped in the room the
    other columns leave, or, when that is less than MIN_WRAPPED, it goes on lines of its own
    under its row (indented) and the others are fitted to the terminal as above."""
    width = terminal_width()
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    wrapped = None if wrap is None else wrap % len(widths)
    if wrapped is not None and _total(widths) <= width:
        wrapped = None  # it fits as it is
    beside = False
    if wrapped is not None:
        room = width - _total(widths) + widths[wrapped]
        beside = room >= MIN_WRAPPED
        if beside:
            widths[wrapped] = room
        else:
            widths[wrapped] = 0
    for column in [shrink] if isinstance(shrink, int) else shrink:
        total = _total(widths) - (2 if wrapped is not None and not beside else 0)
        if total <= width:
            break
        index = column % len(widths)
        if index != wrapped:
            widths[index] = max(len(headers[index]), widths[index] - (total - width))
    lines = []
    for n, row in enumerate(cells):
        parts = []
        for i, cell in enumerate(row):
            if i == wrapped:
                continue
            if len(cell) > widths[i]:
                cell = cell[: max(1, widths[i] - 1)] + "…"
            parts.append(cell.ljust(widths[i]))
        if wrapped is None:
            lines.append("  ".join(parts).rstrip())
        elif beside:
            pieces = textwrap.wrap(row[wrapped], widths[wrapped], break_on_hyphens=False) or [""]
            blank = [" " * len(part) for part in parts]
            for k, piece in enumerate(pieces):
                line = (parts if k == 0 else blank)[:]
                line.insert(wrapped, piece)
                lines.append("  ".join(line).rstrip())
        else:
            lines.append("  ".join(parts).rstrip())
            if n and row[wrapped]:
                text = textwrap.wrap(row[wrapped], max(MIN_WRAPPED, width - 4))
                lines += ["    " + piece for piece in text]
    return "\n".join(lines)


def _total(widths: Sequence[int]) -> int:
    return sum(widths) + 2 * (len(widths) - 1)


def print_results(results: Sequence[Any], as_json: bool) -> None:
    """The answers to one request per run or schedule: as JSON (one object for one answer, a
    list for several), else each answer's message on a line of its own."""
    if as_json:
        print_json(results if len(results) > 1 else results[0])
        return
    for result in results:
        click.echo(result["message"])
