"""How Slurm's commands reach the cluster: a transport runs an argument list and writes a file.

The Slurm backend builds commands and parses their output; a transport only carries them, so the
same backend runs Slurm locally or over SSH.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


class TransportError(Exception):
    """The command could not be run at all (not found, timed out, connection lost).

    Translated into SlurmUnreachable by the backend; never reaches the CLI as itself.
    """


class Transport(Protocol):
    def run(
        self, argv: list[str], *, timeout_s: float, stdin: str | None = None
    ) -> CommandResult: ...

    def write_file(self, path: PurePosixPath, data: str, mode: int = 0o640) -> None: ...

    def close(self) -> None: ...
