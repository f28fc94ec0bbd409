"""Slurm's units, read the way sbatch reads them: time limits and memory sizes (pure)."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["TIME_FORMS", "parse_mem_mb", "parse_slurm_time"]

# sbatch(1) --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes" and "days-hours:minutes:seconds". The leading number may be large
# ("90" minutes, "48:00:00"); the ones after it are clock fields and must be < 60 (or < 24).
_TIME_RE = re.compile(
    r"(?P<days>[0-9]{1,4})-(?P<dh>[0-9]{1,2})(?::(?P<dm>[0-9]{1,2})(?::(?P<ds>[0-9]{1,2}))?)?"
    r"|(?P<a>[0-9]{1,7})(?::(?P<b>[0-9]{1,2})(?::(?P<c>[0-9]{1,2}))?)?"
)
TIME_FORMS: Final = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def parse_slurm_time(text: str) -> int:
    """Seconds in a Slurm time limit: `parse_slurm_time("1-02:03:04") == 93784`.

    Raises ValueError, with the accepted forms, for anything sbatch would not read the same way.
    No range check: `"0"` is 0 seconds. Slurm's `UNLIMITED`/`INFINITE` are refused.
    """
    m = _TIME_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a Slurm time limit; the forms are {TIME_FORMS}")
    g = m.groupdict()
    if g["days"] is not None:
        days, hours = int(g["days"]), int(g["dh"])
        minutes, seconds = int(g["dm"] or 0), int(g["ds"] or 0)
        if hours > 23:
            raise ValueError(f"hours after 'D-' must be 0 to 23, got {hours}")
    elif g["c"] is not None:  # HH:MM:SS
        days, hours, minutes, seconds = 0, int(g["a"]), int(g["b"]), int(g["c"])
    elif g["b"] is not None:  # MM:SS
        days, hours, minutes, seconds = 0, 0, int(g["a"]), int(g["b"])
    else:  # MM
        days, hours, minutes, seconds = 0, 0, int(g["a"]), 0
    if (g["days"] is not None or g["c"] is not None) and minutes > 59:
        raise ValueError(f"minutes after the hours must be 0 to 59, got {minutes}")
    if seconds > 59:
        raise ValueError(f"seconds must be 0 to 59, got {seconds}")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


_MEM_RE = re.compile(r"(?P<n>[0-9]{1,12})(?P<unit>[MmGgTt]?)")
_MEM_UNIT_MB: Final = {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_mem_mb(text: str) -> int:
    """Megabytes in a memory size: `parse_mem_mb("4G") == 4096`; a bare number is megabytes.

    Accepts what sbatch --mem accepts with M, G or T (any case). Raises ValueError with a hint for
    the usual slips ("4GB", "1.5G", "512K"). No range check: `"0"` is 0.
    """
    m = _MEM_RE.fullmatch(text)
    if m is not None:
        return int(m["n"]) * _MEM_UNIT_MB[m["unit"].upper()]
    hint = ""
    if re.fullmatch(r"[0-9]+[MGTmgt][Bb]", text):
        hint = f" (write {text[:-1]}, without the B)"
    elif re.fullmatch(r"[0-9]*\.[0-9]+[MGTmgt]?", text):
        hint = " (sizes are whole numbers: write 1536M rather than 1.5G)"
    elif re.fullmatch(r"[0-9]+[Kk][Bb]?", text):
        hint = " (the smallest unit here is M)"
    raise ValueError(f"not a memory size{hint}")
