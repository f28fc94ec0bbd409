"""When a schedule fires, decided by pure functions: cron and time-zone checks, the APScheduler
trigger they become, what to do about firings missed while the daemon was down, and overlap.

Low level on purpose (it imports only the standard library and hpcops.names): the spec's
`schedule:` block and the config's `schedules:` section check their values with it without
reaching the scheduling service, which imports the store and APScheduler.

Two differences between crontab(5) and APScheduler 3.x's CronTrigger would silently fire on the
wrong days, so a cron expression is parsed here, by crontab's rules, and handed to APScheduler
as explicit values:
  - day of week: crontab counts 0 (or 7) = Sunday, APScheduler 3.x 0 = Monday (its
    `from_crontab` docstring warns about it; APScheduler issue 286). `0 3 * * 1` must mean
    Mondays, so days of week go to APScheduler by name (`mon`), never by number.
  - day of month AND day of week: crontab fires when EITHER matches if both are restricted,
    APScheduler when both match. Such expressions are refused with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from hpcops.names import closest

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

CATCH_UP_POLICIES: Final = ("one", "none", "all")
CATCH_UP_HELP: Final = (
    "one: a single run for the latest missed firing, if within the grace period (default); "
    "none: missed firings are only recorded; all: a run for every missed firing within the grace"
)
# A firing this late is still on time: the scheduler's thread may be busy with another firing
# for a moment. Later than this, it was missed (the daemon was down, stopped or suspended).
ON_TIME_S: Final = 60.0
MAX_EVERY_S: Final = 31 * 86400
CRON_EXAMPLE: Final = "'0 3 * * 1' (Mondays at 03:00)"


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: dict[str, int]
    example: str


_MONTHS: Final = {
    name: i + 1
    for i, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
# Indexed by crontab's day number (0 = Sunday); APScheduler 3.x knows the same names.
_DAY_NAMES: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_DAYS: Final = {name: i for i, name in enumerate(_DAY_NAMES)}

_FIELDS: Final = (
    _CronField("minute", 0, 59, {}, "0,30"),
    _CronField("hour", 0, 23, {}, "3 or 9-17"),
    _CronField("day of month", 1, 31, {}, "1 or 1,15"),
    _CronField("month", 1, 12, _MONTHS, "1-6 or jan-jun"),
    _CronField("day of week", 0, 7, _CRON_DAYS, "1-5 or mon-fri (0 and 7 are Sunday)"),
)
_ITEM_RE = re.compile(r"[A-Za-z0-9*/-]+")


@dataclass(frozen=True)
class CronFields:
    """A crontab expression as the values APScheduler's CronTrigger takes, meaning what crontab
    means."""

    minute: str
    hour: str
    day: str
    month: str
    day_of_week: str


def _value(token: str, field: _CronField) -> int:
    if token.isdigit():
        number = int(token)
    elif token.lower() in field.names:
        number = field.names[token.lower()]
    else:
        named = f" or a name ({', '.join(field.names)})" if field.names else ""
        raise ValueError(f"{token!r} is not a number{named}")
    if not field.low <= number <= field.high:
        raise ValueError(f"{number} is outside {field.low}-{field.high}")
    return number


def _field_values(text: str, field: _CronField) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item or not _ITEM_RE.fullmatch(item):
            raise ValueError(f"{item!r} is not a value, range (a-b), step (*/n, a-b/n) or *")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"the step in {item!r} must be a whole number of at least 1")
            step = int(step_text)
            if step > field.high - field.low:
                raise ValueError(f"the step {step} is longer than the field's whole range")
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _value(first, field), _value(last, field)
            if low > high:
                raise ValueError(f"the range {base!r} runs backwards")
        else:
            if slash:
                raise ValueError(f"a step needs a range or *, e.g. */{step} or {base}-59/{step}")
            low = high = _value(base, field)
        values.update(range(low, high + 1, step))
    return values


def parse_cron(expr: str) -> CronFields:
    """Check a 5-field crontab expression; raise ValueError saying which field is wrong and why."""
    if not isinstance(expr, str):
        raise ValueError(f"a cron expression is text such as {CRON_EXAMPLE}")
    parts = expr.split()
    if len(parts) != 5:
        hint = ""
        if expr.strip().startswith("@"):
            hint = "; macros such as @daily are not supported, write e.g. '0 0 * * *'"
        elif len(parts) == 6:
            hint = "; there is no seconds field: for a schedule in seconds, use every_s (--every)"
        raise ValueError(
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"e.g. {CRON_EXAMPLE}; got {len(parts)}{hint}"
        )
    sets: list[set[int]] = []
    for text, field in zip(parts, _FIELDS, strict=True):
        try:
            sets.append(_field_values(text, field))
        except ValueError as exc:
            raise ValueError(
                f"{field.name} field {text!r}: {exc}; allowed {field.low}-{field.high}, "
                f"e.g. {field.example}"
            ) from None
    day_text, dow_text = parts[2], parts[4]
    if not day_text.startswith("*") and not dow_text.startswith("*"):
        raise ValueError(
            f"restricts both the day of month ({day_text}) and the day of week ({dow_text}); "
            "crontab fires when either matches, APScheduler only when both do. Restrict one "
            "of them (use * for the other), or make two schedules"
        )

    def explicit(index: int) -> str:
        return "*" if parts[index] == "*" else ",".join(str(v) for v in sorted(sets[index]))

    days = sorted({v % 7 for v in sets[4]})  # 7 is Sunday too
    day_of_week = "*" if parts[4] == "*" else ",".join(_DAY_NAMES[d] for d in days)
    return CronFields(explicit(0), explicit(1), explicit(2), explicit(3), day_of_week)


def repeated_wall_time(epoch: float, cron: str | None, timezone: str) -> bool:
    """A due time of a cron schedule with a fixed hour that is its wall-clock time come round a
    second time, as the clocks go back at the end of summer time (`30 2 * * *` in Europe/Berlin
    is due at 02:30 +02:00 and again at 02:30 +01:00, an hour apart). crontab runs such a job
    once, and so does hpcops: the second is dropped. An hour field of `*` or `*/N` fires in
    both hours, as crontab does: they are two real hours."""
    if cron is None or cron.split()[1].startswith("*"):
        return False
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(epoch, ZoneInfo(timezone)).fold == 1


_ZONE_RE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,3}")


def check_timezone(name: str) -> str:
    """An IANA time zone name (Europe/Berlin, UTC); ValueError with a suggestion otherwise."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

    if isinstance(name, str) and _ZONE_RE.fullmatch(name):
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
        else:
            return name
    close = closest(str(name), sorted(available_timezones()))
    hint = f" (did you mean {close!r}?)" if close else ""
    raise ValueError(
        f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin, "
        f"America/New_York or UTC{hint}"
    )


def check_every_s(value: int, min_s: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"an interval is a whole number of seconds, not {value!r}")
    if not min_s <= value <= MAX_EVERY_S:
        raise ValueError(
            f"{value} s is outside {min_s}-{MAX_EVERY_S} s (each firing is an sbatch; the "
            "shortest interval is the config's schedules.min_interval_s)"
        )
    return value


def check_catch_up(value: str) -> str:
    if value not in CATCH_UP_POLICIES:
        allowed = ", ".join(CATCH_UP_POLICIES)
        raise ValueError(f"{value!r} is not one of {allowed} ({CATCH_UP_HELP})")
    return value


def build_trigger(
    *, cron: str | None, every_s: int | None, timezone: str, anchor: float
) -> BaseTrigger:
    """The APScheduler trigger for a schedule. An interval counts from `anchor` (the schedule's
    creation, whole seconds), so a restart keeps the same grid of firing times."""
    from zoneinfo import ZoneInfo

    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    zone = ZoneInfo(timezone)
    if cron is not None:
        f = parse_cron(cron)
        return CronTrigger(
            minute=f.minute,
            hour=f.hour,
            day=f.day,
            month=f.month,
            day_of_week=f.day_of_week,
            second=0,
            timezone=zone,
        )
    if every_s is None:
        raise ValueError("a schedule needs a cron expression or an interval")
    start = datetime.fromtimestamp(int(anchor), zone)
    return IntervalTrigger(seconds=every_s, start_date=start, timezone=zone)


def cadence(
    cron: str | None, every_s: int | None, timezone: str, check_every_s: int | None = None
) -> str:
    """How often, in words for a table. `check_every_s`: an on-data-change schedule."""
    if check_every_s is not None:
        return f"on data change, checked every {check_every_s} s"
    if cron is not None:
        return f"cron {cron} ({timezone})"
    return f"every {every_s} s"


@dataclass(frozen=True)
class Planned:
    """One firing to record: fire a run for it, or record why not."""

    scheduled_for: float
    fire: bool
    kind: str  # "scheduled" or "catch-up"
    reason: str


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def plan_firings(
    run_times: Sequence[float],
    now: float,
    *,
    catch_up: str,
    grace_s: float,
    up_since: float | None = None,
) -> list[Planned]:
    """What to do with the times APScheduler says were due (all of them: its own coalescing and
    misfire handling are off, so the decision and its reason are ours).

    One time, at most ON_TIME_S late: an ordinary firing. Several times, all due since
    `up_since` (when this daemon started) and all at most ON_TIME_S late: the daemon was
    running but starting up or busy (a loaded login node delays the first tick, or the
    scheduler's thread, past a short interval), so it is one ordinary firing for the latest,
    and the reason counts the others. Older ones
    mean the daemon was suspended (SIGSTOP, a paused VM) or the clock jumped: missed.
    Anything else: the daemon was down. Then `one` fires once for the latest (within the
    grace), `all` fires for each within the grace, `none` records the latest as missed. Older
    missed times are counted in the reason, not recorded one by one (a week's downtime of a
    5-second schedule is 120,000 of them).
    """
    if not run_times:
        return []
    times = sorted(run_times)
    latest = times[-1]
    if now - latest <= ON_TIME_S:
        if len(times) == 1:
            return [Planned(latest, True, "scheduled", "")]
        if up_since is not None and times[0] >= up_since and now - times[0] <= ON_TIME_S:
            busy = (
                f"{len(times) - 1} earlier due time(s) since {_iso(times[0])} were delivered late "
                "while the daemon was starting up or busy; fired once, for the latest"
            )
            return [Planned(latest, True, "scheduled", busy)]
    missed = f"{len(times)} firing(s) missed since {_iso(times[0])} (the daemon was not running)"
    within = [t for t in times if now - t <= grace_s]
    if catch_up == "none":
        return [Planned(latest, False, "catch-up", f"{missed}; catch_up is none")]
    if not within:
        return [
            Planned(
                latest,
                False,
                "catch-up",
                f"{missed}; the latest is {now - latest:.0f} s old, beyond the catch-up grace "
                f"of {grace_s:.0f} s",
            )
        ]
    if catch_up == "all":
        return [Planned(t, True, "catch-up", f"catch-up: {missed}") for t in within]
    return [Planned(latest, True, "catch-up", f"catch-up (one run): {missed}")]


def overlap_reason(
    active_run: int | str | None,
    active_state: str | None,
    allow_overlap: bool,
    *,
    what: str = "run",
) -> str | None:
    """Why a firing is skipped because what an earlier firing queued (`what`: a run, or a
    pipeline: "p3") is still queued or running; None when it may go ahead."""
    if allow_overlap or active_run is None:
        return None
    return (
        f"{what} {active_run} from an earlier firing is still {active_state}; this schedule "
        "does not overlap runs (add it with --allow-overlap to permit that)"
    )
