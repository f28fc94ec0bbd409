"""Run Slurm's commands on this machine: the default for a daemon on the login node."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path, PurePosixPath

from hpcops.transport.base import CommandResult, TransportError


class LocalTransport:
    def run(self, argv: list[str], *, timeout_s: float, stdin: str | None = None) -> CommandResult:
        started = time.monotonic()
        try:
            proc = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                # C locale: parsers read Slurm's English messages and dates.
                env={**os.environ, "LC_ALL": "C"},
            )
        except FileNotFoundError as exc:
            raise TransportError(f"{argv[0]}: command not found on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise TransportError(f"{' '.join(argv)}: no answer after {timeout_s:.0f} s") from exc
        except OSError as exc:
            raise TransportError(f"{argv[0]}: cannot run: {exc}") from exc
        return CommandResult(
            tuple(argv), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started
        )

    def write_file(self, path: PurePosixPath, data: str, mode: int = 0o640) -> None:
        # Write then rename: a reader never sees half a script.
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        tmp.replace(target)

    def close(self) -> None:
        return None
