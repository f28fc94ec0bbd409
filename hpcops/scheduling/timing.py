"""Moved to `hpcops.cadence` (issue 11): the pure cadence code sits below spec and config now.

Kept only for the two importers other owners are moving (`hpcops/api/views.py`,
`hpcops/store/db.py`); delete this file once they import `hpcops.cadence`.
"""

from hpcops.cadence import (
    CATCH_UP_HELP,
    CATCH_UP_POLICIES,
    MAX_EVERY_S,
    ON_TIME_S,
    CronFields,
    Planned,
    build_trigger,
    cadence,
    check_catch_up,
    check_every_s,
    check_timezone,
    overlap_reason,
    parse_cron,
    plan_firings,
)

__all__ = [
    "CATCH_UP_HELP",
    "CATCH_UP_POLICIES",
    "MAX_EVERY_S",
    "ON_TIME_S",
    "CronFields",
    "Planned",
    "build_trigger",
    "cadence",
    "check_catch_up",
    "check_every_s",
    "check_timezone",
    "overlap_reason",
    "parse_cron",
    "plan_firings",
]
