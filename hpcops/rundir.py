"""A run's directory on shared storage: the contract between the job script and the daemon.

The job writes its own start and end markers here, so the daemon learns that a job started or
ended by reading the filesystem instead of asking slurmctld (docs/design.md, decision 4). The files
are reached through the daemon's transport (hpcops/transport): on this machine, or over SSH for a
daemon off the cluster; this module only names them and parses them.

    RUN_DIR/
      job.sbatch        the rendered script, exactly as submitted
      spec.yaml         the spec as the daemon accepted it
      stdout.log        the job's stdout  (#SBATCH --output)
      stderr.log        the job's stderr  (#SBATCH --error)
      hpcops.started    "<epoch_s> <hostname> <slurm_job_id>", written when the script starts
      hpcops.exit       "<exit_code> <epoch_s>", written atomically (rename) when the script ends
      staging.json      the staging plan the daemon writes for the stager (runs with data:)
      hpcops.staging    the stager's progress, JSON, rewritten as it goes (`hpcops show`)
      hpcops.staged     "<exit code> <epoch_s> <token>", written by the stager at its end
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcops.errors import HpcopsError
from hpcops.names import is_job_id

# The file the daemon writes for the stager: which versions to stage, from where, to where.
STAGING_PLAN = "staging.json"
# The stager's progress (JSON: the attempt's token, each target's phase, an error).
STAGING_PROGRESS = "hpcops.staging"
# "<exit code> <epoch> <token>", written by the stager at its end.
STAGING_MARKER = "hpcops.staged"


@dataclass(frozen=True)
class StartMarker:
    started_at: float
    hostname: str
    slurm_job_id: str


@dataclass(frozen=True)
class ExitMarker:
    exit_code: int
    ended_at: float


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def script(self) -> Path:
        return self.path / "job.sbatch"

    @property
    def spec(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def stdout(self) -> Path:
        return self.path / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.path / "stderr.log"

    @property
    def started_marker(self) -> Path:
        return self.path / "hpcops.started"

    @property
    def exit_marker(self) -> Path:
        return self.path / "hpcops.exit"

    @property
    def markers(self) -> tuple[Path, Path]:
        return self.started_marker, self.exit_marker

    @property
    def staged_marker(self) -> Path:
        return self.path / STAGING_MARKER

    @property
    def staging_progress(self) -> Path:
        return self.path / STAGING_PROGRESS


# The job writes these files: every value read from them is bounded before it is believed.
# An epoch before 2000 or after 2100 is no clock reading of a job's (1e300 once broke `hpcops ls`
# for everyone); an exit status is what bash's $? can be, 0..255 (128+N for signal N).
_EPOCH_MIN = 946_684_800.0  # 2000-01-01
_EPOCH_MAX = 4_102_444_800.0  # 2100-01-01
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_MARKER_MAX_CHARS = 512
# Progress files: small JSON, shallow. "[" * 200000 once stopped finalization for the lab.
PROGRESS_MAX_BYTES = 256 * 1024
_PROGRESS_MAX_DEPTH = 16


class BadMarker(HpcopsError):
    """A marker that is complete but cannot be what the job script wrote; says why. It costs
    only its own run: the daemon records the reason there and follows the job through Slurm."""


def parse_start_marker(text: str) -> StartMarker | None:
    """ "<epoch_s> <hostname> <slurm_job_id>"; None while it is being written (too few fields).
    BadMarker for one that is whole but wrong."""
    parts = text[:_MARKER_MAX_CHARS].split()
    if len(parts) < 3:
        return None  # a marker being written right now; the next tick reads it whole
    started_at = _epoch(parts[0])
    if not _HOSTNAME_RE.fullmatch(parts[1]):
        raise BadMarker(f"hostname {parts[1][:40]!r} is not a host name")
    if not is_job_id(parts[2]):
        raise BadMarker(f"job id {parts[2][:40]!r} is not a Slurm job id")
    return StartMarker(started_at=started_at, hostname=parts[1], slurm_job_id=parts[2])


def parse_exit_marker(text: str) -> ExitMarker | None:
    """ "<exit_code> <epoch_s>"; None while it is being written. BadMarker for one that is
    whole but wrong."""
    parts = text[:_MARKER_MAX_CHARS].split()
    if len(parts) < 2:
        return None
    if not parts[0].isascii() or not parts[0].isdigit() or len(parts[0]) > 3:
        raise BadMarker(f"exit code {parts[0][:40]!r} is not 0..255")
    code = int(parts[0])
    if code > 255:
        raise BadMarker(f"exit code {code} is not 0..255")
    return ExitMarker(exit_code=code, ended_at=_epoch(parts[1]))


def _epoch(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadMarker(f"time {text[:40]!r} is not a number of seconds") from None
    if not _EPOCH_MIN <= value <= _EPOCH_MAX:  # also false for nan
        raise BadMarker(f"time {text[:40]!r} is not a plausible epoch")
    return value


def parse_progress(text: str | bytes | None) -> dict[str, Any] | None:
    """A JSON object a job wrote (the stager's progress), or None: absent, too large, nested
    deeper than a progress file is, not JSON, or not an object."""
    if text is None:
        return None
    data = text.encode("utf-8", errors="replace") if isinstance(text, str) else text
    if len(data) > PROGRESS_MAX_BYTES or _nesting(data) > _PROGRESS_MAX_DEPTH:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _nesting(data: bytes) -> int:
    """How deep brackets nest in a JSON text, outside strings: checked before parsing, so a
    hostile file costs one linear pass, not a deep recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


TAIL_MAX_BYTES = 16384


def last_lines(data: bytes, max_lines: int = 20) -> str:
    """The last lines of a log's end (the last TAIL_MAX_BYTES of it are enough: a 10 GB log
    costs the same as a small one)."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])
