"""Slurm job arrays as text: the `--array=` value hpcops writes, and the task ids and index
expressions squeue and sacct print (pure; Slurm 22.05, tests/fixtures/slurm/README.md).

- `sbatch --array=3-4,9-12%4`: indices as ranges and single values, `%N` runs at most N at once.
- A started task is `<array id>_<index>` (`123_4`); the pending tasks of one array share one
  record, printed `123_[4-9%4]`, `123_[2,4%2]`, `123_[0-98:2%3]` (a stepped range) or
  `123_[1000]`. sacct prints the tasks of an array cancelled before they started the same way.

Expansion is bounded: a line naming more tasks than `MAX_TASKS_PER_LINE` is refused before any
list is built, so a broken or hostile line costs no memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "ARRAY_OPTION_RE",
    "DEFAULT_MAX_ARRAY_SIZE",
    "MAX_TASKS_PER_LINE",
    "MAX_TASK_INDEX",
    "array_option",
    "expand_tasks",
    "is_array_option",
    "split_array_id",
    "split_task_id",
]

# What hpcops puts after `--array=`: the option syntax without steps, which hpcops never writes.
ARRAY_OPTION_RE: Final = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*(%[0-9]+)?")

# The largest index names.JOB_ID_RE accepts (7 digits); Slurm's own ceiling is MaxArraySize - 1,
# and MaxArraySize is at most 4000001 (slurm.conf(5)).
MAX_TASK_INDEX: Final = 9_999_999
# slurm.conf's MaxArraySize when a site leaves it unset (and the dev cluster's): indices 0-1000.
DEFAULT_MAX_ARRAY_SIZE: Final = 1001

# The most tasks one squeue or sacct line may stand for. The dev cluster's MaxArraySize is 1001;
# a line naming more than this is not believed.
MAX_TASKS_PER_LINE: Final = 100_000

# Longest index expression read at all (characters): far above any real array's.
_MAX_EXPRESSION_CHARS: Final = 100_000

_TASK_ID_RE: Final = re.compile(r"([1-9][0-9]{0,9})_([0-9]{1,7})")
_ARRAY_ID_RE: Final = re.compile(r"([1-9][0-9]{0,9})_(\[[^\]]*\]|[0-9]{1,7})")
_PART_RE: Final = re.compile(r"([0-9]{1,7})(?:-([0-9]{1,7})(?::([0-9]{1,7}))?)?")


def is_array_option(text: str) -> bool:
    return ARRAY_OPTION_RE.fullmatch(text) is not None


def array_option(indices: Iterable[int], throttle: int | None = None) -> str:
    """`--array`'s value for these task indices: sorted, without repeats, runs compressed into
    ranges, `%throttle` appended. [9, 3, 10, 4, 11, 12], 4 → "3-4,9-12%4"."""
    values: set[int] = set()
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"an array index is an integer, not {index!r}")
        if not 0 <= index <= MAX_TASK_INDEX:
            raise ValueError(f"array index {index} is outside 0..{MAX_TASK_INDEX}")
        values.add(index)
    if not values:
        raise ValueError("an array needs at least one index")
    if throttle is not None and (
        isinstance(throttle, bool) or not isinstance(throttle, int) or throttle < 1
    ):
        raise ValueError(f"an array's throttle is an integer >= 1, not {throttle!r}")
    if len(values) > MAX_TASKS_PER_LINE:
        raise ValueError(f"an array of more than {MAX_TASKS_PER_LINE} tasks")
    runs: list[list[int]] = []  # [first, last] of each run of consecutive indices
    for index in sorted(values):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    parts = [str(first) if first == last else f"{first}-{last}" for first, last in runs]
    return ",".join(parts) + (f"%{throttle}" if throttle is not None else "")


def split_task_id(job_id: str) -> tuple[str, int | None]:
    """ "123_4" → ("123", 4); "123" → ("123", None). Anything else raises ValueError."""
    job_id = job_id.strip()
    match = _TASK_ID_RE.fullmatch(job_id)
    if match is not None:
        return match.group(1), int(match.group(2))
    if re.fullmatch(r"[1-9][0-9]{0,9}", job_id):
        return job_id, None
    raise ValueError(f"{job_id[:40]!r} is not a Slurm job id or array task id")


def split_array_id(text: str) -> tuple[str, str] | None:
    """A squeue/sacct JobID that names array tasks, split: "123_[4-9%4]" → ("123", "[4-9%4]"),
    "123_4" → ("123", "4"). None for anything else (a plain job id, junk)."""
    match = _ARRAY_ID_RE.fullmatch(text.strip())
    if match is None:
        return None
    return match.group(1), match.group(2)


def expand_tasks(text: str, *, limit: int = MAX_TASKS_PER_LINE) -> list[int]:
    """The task indices an index expression names, in ascending order without repeats: "4",
    "[4-9%4]", "[1,3,5-7]", "[0-98:2%3]" (every second index), "[1000]". The throttle is
    dropped. Raises ValueError for anything else, including a cut-off expression (squeue cuts a
    long %i at 31 characters without a mark; %K ends a cut with "...") and for one that names
    more than `limit` tasks (counted before a list is built)."""
    if len(text) > _MAX_EXPRESSION_CHARS:
        raise ValueError("array index expression too long")
    body = text.strip()
    if body.startswith("["):
        if not body.endswith("]"):
            raise ValueError(f"array index expression {body[:40]!r} is cut off or broken")
        body = body[1:-1]
    body, _, throttle = body.partition("%")
    if throttle and not re.fullmatch(r"[0-9]{1,7}", throttle):
        raise ValueError(f"bad array throttle {throttle[:20]!r}")
    ranges: list[range] = []
    total = 0
    for part in body.split(","):
        match = _PART_RE.fullmatch(part)
        if match is None:
            raise ValueError(f"bad array index {part[:40]!r}")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) is not None else 1
        if last < first or step < 1:
            raise ValueError(f"bad array index range {part[:40]!r}")
        span = range(first, last + 1, step)
        total += len(span)
        if total > limit:
            raise ValueError(f"array index expression names more than {limit} tasks")
        ranges.append(span)
    if len(ranges) == 1:
        return list(ranges[0])
    return sorted({index for span in ranges for index in span})
