"""What `schedule add` asks for, and the settings a schedule is stored with: each value from the
request's options, else the spec's schedule: block, else the lab's config, every problem found
at once. Pure but for the login node's time zone; the service (service.py) stores the result."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpcops import cadence
from hpcops.config_sections import SchedulesConfig
from hpcops.errors import InvalidInput
from hpcops.scheduling import datachange
from hpcops.spec.blocks import ScheduleBlock

# The spec's rule for names (spec.py): a schedule's name is typed and shown like a run's.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ScheduleOptions:
    """What `schedule add` says; None: take it from the spec's schedule block, then the config."""

    name: str | None = None
    cron: str | None = None
    every_s: int | None = None
    timezone: str | None = None
    catch_up: str | None = None
    catch_up_grace_s: int | None = None
    allow_overlap: bool | None = None
    on_data_change: bool | None = None
    check_every_s: int | None = None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _local_zone() -> str:
    """The login node's time zone, as an IANA name, for cron schedules that name none."""
    import tzlocal  # APScheduler's own dependency

    try:
        return str(tzlocal.get_localzone_name() or "UTC")
    except Exception:  # tzlocal raises its own errors for odd /etc/localtime setups
        return "UTC"


def schedule_settings(
    defaults: SchedulesConfig,
    options: ScheduleOptions,
    block: ScheduleBlock | None,
    default_name: str,
    source: str,
    *,
    watch: Callable[[], str | None] | None,
) -> dict[str, Any]:
    """A schedule's settings from the options, else the spec's schedule block, else the
    config's `defaults`; every problem at once (InvalidInput). `watch`: why the spec cannot be
    watched for data changes (None: a pipeline, which fires only on a cron or an interval)."""

    def pick(name: str) -> Any:
        return _first(getattr(options, name), getattr(block, name, None) if block else None)

    cron, every_s = options.cron, options.every_s
    on_data = bool(options.on_data_change)
    if cron is None and every_s is None and not on_data and block is not None:
        cron, every_s, on_data = block.cron, block.every_s, bool(block.on_data_change)
    if on_data and watch is None:
        raise InvalidInput(
            f"{source}: a pipeline fires on --cron or --every, not --on-data-change: its "
            "steps' data is read when each step is queued. Schedule the pipeline on a cron, "
            "or a spec with --on-data-change"
        )
    if on_data and (cron is not None or every_s is not None):
        raise InvalidInput(
            "on-data-change: a schedule fires on one trigger; --on-data-change "
            "(on_data_change) cannot be combined with --cron or --every (cron, every_s)"
        )
    if (cron is None) == (every_s is None) and not on_data:
        raise InvalidInput(
            "a schedule needs exactly one of --cron EXPR (e.g. --cron '0 3 * * 1'), "
            "--every SECONDS and --on-data-change, or a schedule: block in the spec"
            if watch is not None
            else "a pipeline's schedule needs exactly one of --cron EXPR (e.g. --cron "
            "'0 3 * * 1') and --every SECONDS"
        )
    problems = []
    check_every_s = pick("check_every_s")
    if on_data and watch is not None:
        check_every_s = _first(check_every_s, defaults.check_every_s)
        try:
            datachange.check_check_every_s(check_every_s, defaults.min_interval_s)
        except ValueError as exc:
            problems.append(f"check-every: {exc}")
        watched = watch()
        if watched is not None:
            problems.append(f"data: {watched}")
    elif check_every_s is not None:
        problems.append(
            "check-every: is how often an on-data-change schedule looks at its data; it "
            "needs --on-data-change (on_data_change: true)"
        )
    if cron is not None:
        try:
            cadence.parse_cron(cron)
            cron = " ".join(cron.split())
        except ValueError as exc:
            problems.append(f"cron {cron!r}: {exc}")
    if every_s is not None:
        try:
            cadence.check_every_s(every_s, defaults.min_interval_s)
        except ValueError as exc:
            problems.append(f"every: {exc}")
    zone = _first(pick("timezone"), defaults.timezone) or _local_zone()
    try:
        zone = cadence.check_timezone(zone)
    except ValueError as exc:
        problems.append(f"timezone: {exc}")
    catch_up = _first(pick("catch_up"), defaults.catch_up)
    try:
        cadence.check_catch_up(catch_up)
    except ValueError as exc:
        problems.append(f"catch-up: {exc}")
    grace = _first(pick("catch_up_grace_s"), defaults.catch_up_grace_s)
    if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= 31 * 86400:
        problems.append(f"catch-up grace: {grace!r} is not a whole number of seconds 0-2678400")
    name = _first(options.name, block.name if block else None, default_name)
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        problems.append(
            f"name: {name!r} must be letters, digits and . _ - (starting with a letter or "
            "digit), at most 64 characters"
        )
    if problems:
        raise InvalidInput(f"{source}: cannot schedule it:\n  " + "\n  ".join(problems))
    return {
        "name": name,
        "cron": cron,
        "every_s": every_s,
        "timezone": zone,
        "catch_up": catch_up,
        "catch_up_grace_s": grace,
        "allow_overlap": bool(pick("allow_overlap")),
        "on_data_change": on_data,
        "check_every_s": check_every_s if on_data else None,
    }
