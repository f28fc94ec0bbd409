"""A run's directory on shared storage: the contract between the job script and the daemon.

The job writes its own start and end markers here, so the daemon learns that a job started or
ended by reading the filesystem instead of asking slurmctld (DESIGN.md, decision 4).

    RUN_DIR/
      job.sbatch        the rendered script, exactly as submitted
      spec.yaml         the spec as the daemon accepted it
      stdout.log        the job's stdout  (#SBATCH --output)
      stderr.log        the job's stderr  (#SBATCH --error)
      hpcops.started    "<epoch_s> <hostname> <slurm_job_id>", written when the script starts
      hpcops.exit       "<exit_code> <epoch_s>", written atomically (rename) when the script ends
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


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

    def create(self) -> None:
        # 0o750: the lab's group may read logs; nobody else sees the lab's work.
        self.path.mkdir(parents=True, exist_ok=True, mode=0o750)

    def read_started(self) -> StartMarker | None:
        text = _read_small(self.started_marker)
        return parse_start_marker(text) if text is not None else None

    def read_exit(self) -> ExitMarker | None:
        text = _read_small(self.exit_marker)
        return parse_exit_marker(text) if text is not None else None

    def read_small(self, name: str, max_bytes: int = 65536) -> str | None:
        """A small file the job writes (the stager's progress), read as safely as a marker."""
        return _read_small(self.path / name, max_bytes)

    def clear_markers(self) -> None:
        """Before a (re)submission: an earlier attempt's markers must not speak for this job."""
        for marker in (self.started_marker, self.exit_marker):
            marker.unlink(missing_ok=True)


def _read_small(path: Path, max_bytes: int = 4096) -> str | None:
    """A marker's text, or None. The job owns its run directory and could leave anything at a
    marker's path: a FIFO must not block the daemon (O_NONBLOCK, regular files only), and an
    unreadable file counts as not written yet."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, max_bytes).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


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


def tail_text(path: Path, max_lines: int = 20, max_bytes: int = 16384) -> str:
    """The last lines of a log, read from its end so a 10 GB log costs the same as a small one."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            f.seek(max(0, size - max_bytes), os.SEEK_SET)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])
