"""A run's directory on shared storage: the contract between the job script and the daemon.

The job writes its own start and end markers here, so the daemon learns that a job started or
ended by reading the filesystem instead of asking slurmctld (DESIGN.md, decision 4). The files
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

from dataclasses import dataclass
from pathlib import Path

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


def parse_start_marker(text: str) -> StartMarker | None:
    parts = text.split()
    if len(parts) < 3:
        return None  # a marker being written right now; the next tick reads it whole
    try:
        return StartMarker(started_at=float(parts[0]), hostname=parts[1], slurm_job_id=parts[2])
    except ValueError:
        return None


def parse_exit_marker(text: str) -> ExitMarker | None:
    parts = text.split()
    if len(parts) < 2:
        return None
    try:
        return ExitMarker(exit_code=int(parts[0]), ended_at=float(parts[1]))
    except ValueError:
        return None


TAIL_MAX_BYTES = 16384


def last_lines(data: bytes, max_lines: int = 20) -> str:
    """The last lines of a log's end (the last TAIL_MAX_BYTES of it are enough: a 10 GB log
    costs the same as a small one)."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])
