"""`hpcops cache`: the lab's data cache on scratch, its versions and their garbage collection."""

from __future__ import annotations

import click

from hpcops.cli.context import Context, json_option, pass_ctx
from hpcops.cli.parsing import group

_DURATION_UNITS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS: dict[str, int] = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """30d, 12h, 90m, 45s: a duration in seconds."""
    if value is None:
        return None
    text = value.strip().lower()
    if len(text) > 1 and text[:-1].isdigit() and text[-1] in _DURATION_UNITS:
        return int(text[:-1]) * _DURATION_UNITS[text[-1]]
    raise click.BadParameter(f"{value!r} is not a duration such as 30d, 12h, 90m or 45s")


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """500G, 2T, 800M or a number of bytes: a size in bytes."""
    if value is None:
        return None
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    number = text[: len(text) - len(unit)]
    if number.isdigit():
        return int(number) * _SIZE_UNITS[unit]
    raise click.BadParameter(f"{value!r} is not a size such as 500G, 2T or 800M")


@group()
def cache() -> None:
    """The lab's data cache on scratch: which data versions it holds, and gc."""


@cache.command("ls")
@json_option
@pass_ctx
def cache_ls(obj: Context, as_json: bool) -> None:
    """Data versions the lab's runs used: size, files, last use, runs, whether cached.

    \b
    --json: a list of {"md5", "paths", "repos", "size", "nfiles", "runs", "last_used",
    "needed", "in_cache"}; in_cache is complete, partial or absent; needed means a queued or
    active run uses it (gc keeps it).
    """
    from hpcops.cli.output import human_bytes, local_time, print_json, table

    versions = obj.call("cache_ls")
    if as_json:
        print_json(versions)
        return
    rows = [
        [
            v["md5"][:14],
            ",".join(v["paths"]),
            human_bytes(v["size"]),
            str(v["nfiles"] or "-"),
            local_time(v["last_used"]),
            _short_list(v["runs"]),
            v["in_cache"] + (" (needed)" if v["needed"] else ""),
        ]
        for v in versions
    ]
    click.echo(
        table(["VERSION", "PATH", "SIZE", "FILES", "LAST USE", "RUNS", "CACHE"], rows, shrink=1)
    )


@cache.command("gc")
@click.option(
    "--older-than",
    "older",
    callback=_duration,
    default=None,
    help="Remove versions no run used for this long (30d, 12h).",
)
@click.option(
    "--max-size",
    "max_size",
    callback=_size,
    default=None,
    help="Then remove the least recently used until the rest fits (500G, 2T).",
)
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
@json_option
@pass_ctx
def cache_gc(
    obj: Context, older: int | None, max_size: int | None, dry_run: bool, as_json: bool
) -> None:
    """Free the data cache (leads only). Never removes a version a queued or active run needs.

    \b
      hpcops cache gc --older-than 30d --max-size 500G
      hpcops cache gc --max-size 200G --dry-run
    """
    from hpcops.cli.output import human_bytes, print_json

    result = obj.call("cache_gc", older_than_s=older, max_bytes=max_size, dry_run=dry_run)
    if as_json:
        print_json(result)
        return
    verb = "would remove" if dry_run else "removed"
    for item in result["removed"]:
        click.echo(f"{verb} {item['md5']} ({', '.join(item['paths'])}): {item['reason']}")
    if not dry_run:
        click.echo(
            f"{result['files_removed']} files, {human_bytes(result['bytes_freed'])} freed; "
            f"{result['kept']} versions kept"
        )


def _short_list(ids: list[int], shown: int = 4) -> str:
    text = ",".join(str(i) for i in ids[-shown:])
    return f"…{text} ({len(ids)})" if len(ids) > shown else text
