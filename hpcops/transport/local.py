"""Run Slurm's commands and reach the run directories on this machine: the default for a daemon
on the login node. Files are plain system calls, so the marker reads of every tick cost no
process at all."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path, PurePath

from hpcops.transport.base import (
    SMALL_FILE_MAX_BYTES,
    CommandResult,
    FileChunk,
    TransportError,
)


class LocalTransport:
    kind = "local"
    connections_opened = 0

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

    def write_file(self, path: PurePath, data: str, mode: int = 0o640) -> None:
        # Write then rename: a reader never sees half a script.
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        tmp.replace(target)

    def make_dir(self, path: PurePath, mode: int = 0o750) -> None:
        Path(path).mkdir(parents=True, exist_ok=True, mode=mode)

    def remove_files(self, paths: Sequence[PurePath]) -> None:
        for path in paths:
            Path(path).unlink(missing_ok=True)

    def read_small_files(self, paths: Sequence[PurePath]) -> dict[PurePath, str]:
        found = {}
        for path in paths:
            text = _read_small(Path(path))
            if text is not None:
                found[path] = text
        return found

    def read_chunk(self, path: PurePath, offset: int, max_bytes: int) -> FileChunk:
        # The job owns its run directory: a FIFO or a directory where a log should be must
        # neither block the daemon nor fail it; it reads as an empty file.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            return FileChunk(b"", max(offset, 0), 0)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return FileChunk(b"", max(offset, 0), 0)
        with os.fdopen(fd, "rb") as f:
            size = info.st_size
            start = max(0, size + offset) if offset < 0 else min(offset, size)
            f.seek(start)
            return FileChunk(f.read(max_bytes), start, size)

    def close(self) -> None:
        return None


def _read_small(path: Path) -> str | None:
    """A marker's text, or None. The job owns its run directory and could leave anything at a
    marker's path: a FIFO must not block the daemon (O_NONBLOCK, regular files only), and an
    unreadable file counts as not written yet."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, SMALL_FILE_MAX_BYTES).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
