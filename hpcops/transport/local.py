"""Run Slurm's commands and reach the run directories on this machine: the default for a daemon
on the login node. Files are plain system calls, so the marker reads of every tick cost no
process at all."""

from __future__ import annotations

import os
import secrets
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
from hpcops.transport.beneath import UnsafeFile, anchor, read_beneath


class LocalTransport:
    """`trusted_roots` are the directories whose insides jobs write (run root, relay root): a
    file under one of them is opened from the root without following any link (see
    transport/beneath.py). A file under none of them is opened from its own directory, so at
    least its last component is never a link."""

    kind = "local"
    connections_opened = 0

    def __init__(self, trusted_roots: Sequence[Path] = ()) -> None:
        self.trusted_roots = tuple(Path(root) for root in trusted_roots)

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
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        # O_EXCL | O_NOFOLLOW: a link a job planted at the temporary name is never written
        # through; rename then replaces whatever is at the target, a link included, not its
        # destination.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        tmp.replace(target)

    def make_dir(self, path: PurePath, mode: int = 0o750) -> None:
        Path(path).mkdir(parents=True, exist_ok=True, mode=mode)

    def remove_files(self, paths: Sequence[PurePath]) -> None:
        for path in paths:
            Path(path).unlink(missing_ok=True)

    def read_small_files(self, paths: Sequence[PurePath]) -> dict[PurePath, str]:
        """A marker that is a link, a FIFO, a directory or unreadable counts as not written."""
        found = {}
        for path in paths:
            chunk = self._read(path, 0, SMALL_FILE_MAX_BYTES)
            if chunk is not None:
                found[path] = chunk.data.decode("utf-8", errors="replace")
        return found

    def read_chunk(self, path: PurePath, offset: int, max_bytes: int) -> FileChunk:
        # The job owns its run directory: a link, a FIFO or a directory where a log should be
        # must neither block the daemon nor show it anything else; it reads as an empty file.
        chunk = self._read(path, offset, max_bytes)
        return chunk if chunk is not None else FileChunk(b"", max(offset, 0), 0)

    def _read(self, path: PurePath, offset: int, max_bytes: int) -> FileChunk | None:
        root, relative = anchor(self.trusted_roots, path)
        try:
            return read_beneath(root, relative, offset, max_bytes)
        except (UnsafeFile, OSError):
            return None

    def close(self) -> None:
        return None
