"""How the daemon reaches the cluster: a transport runs Slurm's commands and reaches the files of
the run directories, on this machine or over SSH.

The Slurm backend builds commands and parses their output; the engine decides what to read
and write. A transport only carries them, so the same daemon runs on the login node (local) or on
a lab's own server (ssh). Every method either does its whole job or raises TransportError: the
cluster could not be reached, which callers treat as "Slurm unreachable, retry later", never as a
reason to fail a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol

from hpcops.errors import HpcopsError


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


@dataclass(frozen=True)
class FileChunk:
    """Bytes of a file from `start`, and the file's size when they were read (0: no such file)."""

    data: bytes
    start: int
    size: int


class TransportError(HpcopsError):
    """The command could not be run or the file not reached at all (not found, timed out,
    connection lost). Translated into SlurmUnreachable by the backend and the engine;
    never reaches the CLI as itself."""


# A marker is one short line; anything longer is not a marker the job script wrote.
SMALL_FILE_MAX_BYTES = 4096


class Transport(Protocol):
    # "local" or "ssh", and how many SSH connections it has opened (0 for local): shown by
    # `hpcops daemon status`, so an admin can see the daemon is not opening one per job.
    kind: str
    connections_opened: int

    def run(
        self, argv: list[str], *, timeout_s: float, stdin: str | None = None
    ) -> CommandResult: ...

    def write_file(self, path: PurePath, data: str, mode: int = 0o640) -> None:
        """Write atomically (a reader never sees half a file)."""

    def make_dir(self, path: PurePath, mode: int = 0o750) -> None:
        """Create the directory and missing parents; an existing one is fine."""

    def remove_files(self, paths: Sequence[PurePath]) -> None:
        """Remove files; a missing one is fine."""

    def read_small_files(self, paths: Sequence[PurePath]) -> dict[PurePath, str]:
        """The text of each path that is a regular, readable file (at most SMALL_FILE_MAX_BYTES
        of it), in ONE round trip for all of them; absent paths are left out. The job owns its
        run directory: a FIFO or a directory at a path is not read and must not block."""

    def read_chunk(self, path: PurePath, offset: int, max_bytes: int) -> FileChunk:
        """Up to max_bytes from offset (a negative offset: the last -offset bytes)."""

    def close(self) -> None: ...
