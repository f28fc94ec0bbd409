"""Run Slurm's commands and reach the run directories over SSH: for a daemon on a lab's own server,
off the cluster.

One persistent connection (a paramiko Transport) carries everything: each command is an exec
channel on it (about 50 ms on a reused connection against about 160 ms for a new one:
docs/notes-stack.md), files go through one SFTP session on it, and the markers of every active
run are read by ONE command per tick. A lost connection fails the call in flight with
TransportError (the daemon backs off and fails no run for it) and is reopened lazily, by the
next call that needs it, no sooner than ReconnectLimiter allows: never more than one new
connection per `min_reconnect_interval_s`, exponentially less often while attempts fail. A site
that counts logins sees a handful a day, never one per job or per poll.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TypeVar

import paramiko

from hpcops.backoff import backoff_s
from hpcops.errors import HpcopsError
from hpcops.transport.base import (
    SMALL_FILE_MAX_BYTES,
    CommandResult,
    FileChunk,
    TransportError,
)
from hpcops.transport.ssh_connect import SshTarget, connect, resolve

log = logging.getLogger(__name__)

T = TypeVar("T")

# After failed attempts the wait doubles from min_reconnect_interval_s up to this (or to the
# interval itself, if that is longer).
RECONNECT_BACKOFF_MAX_S = 300.0
# SSH-level keepalives on an idle connection: a silently dead path (a NAT that forgot us) is
# noticed within a few of these instead of at the next command's timeout.
KEEPALIVE_S = 30


@dataclass
class ReconnectLimiter:
    """When the next new connection may be opened, as a pure function of when the last one was
    attempted and how many attempts in a row failed. The clock is the caller's."""

    min_interval_s: float
    backoff_max_s: float = RECONNECT_BACKOFF_MAX_S
    last_attempt_at: float | None = None
    failures: int = 0

    def next_allowed_at(self) -> float:
        if self.last_attempt_at is None:
            return float("-inf")
        return self.last_attempt_at + self.delay_s()

    def delay_s(self) -> float:
        """Since the last attempt: the interval, doubled for each failure after the first."""
        return backoff_s(
            max(self.failures, 1), first_s=self.min_interval_s, max_s=self.backoff_max_s
        )

    def may_connect(self, now: float) -> bool:
        return now >= self.next_allowed_at()

    def attempted(self, now: float, *, ok: bool) -> None:
        self.last_attempt_at = now
        self.failures = 0 if ok else self.failures + 1


# Reads the first line of each path given on stdin, by number, with shell builtins only (no
# process per file). The job writes these files: `[ -f ]` skips a FIFO, `[ ! -L ]` leaves a
# planted link unread, and bash's `read -n` stops after SMALL_FILE_MAX_BYTES characters, so a
# marker of gigabytes with no newline costs no more than a short one. A file swapped for a FIFO
# after the test still cannot block: `<>` opens it read-write (which never waits for a writer)
# and `read -t` gives up on it after 0.2 s.
_READ_SMALL_FILES = r"""
i=0
while IFS= read -r f; do
    if [ -f "$f" ] && [ ! -L "$f" ] && [ -r "$f" ]; then
        line=
        IFS= read -r -n 4096 -t 0.2 line <> "$f"
        printf '%s\t%s\n' "$i" "$line"
    fi
    i=$((i + 1))
done
"""


def parse_small_files(paths: Sequence[PurePath], output: str) -> dict[PurePath, str]:
    """The `<index>\\t<first line>` lines _READ_SMALL_FILES prints, back to paths."""
    found: dict[PurePath, str] = {}
    for line in output.splitlines():
        index, sep, text = line.partition("\t")
        if sep and index.isdigit() and int(index) < len(paths):
            found[paths[int(index)]] = text[:SMALL_FILE_MAX_BYTES]
    return found


class SshTransport:
    kind = "ssh"

    def __init__(
        self,
        target: SshTarget,
        *,
        min_reconnect_interval_s: float,
        io_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        connector: Callable[[SshTarget], paramiko.SSHClient] = connect,
    ) -> None:
        self.target = target
        self.connector = connector
        self.resolved = resolve(target)
        self.where = f"{self.resolved.user}@{self.resolved.host_label} ({target.label})"
        self.limiter = ReconnectLimiter(min_reconnect_interval_s)
        self.io_timeout_s = io_timeout_s
        self.clock = clock
        self.connections_opened = 0
        self.last_error = ""
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_of: paramiko.Transport | None = None  # the connection _sftp runs on
        self._connect_lock = threading.Lock()
        self._sftp_lock = threading.Lock()  # SFTPClient is not safe to share between threads

    @property
    def remote_user(self) -> str:
        """Who the cluster sees: the account whose jobs squeue and sacct filter on."""
        return self.resolved.user

    # --- the connection ---------------------------------------------------------------------

    def connect_now(self) -> None:
        """Open the connection at start-up, raising the clear HpcopsError (unknown host key,
        keys refused, unreachable) instead of a TransportError, so the daemon can refuse to start
        on a configuration that can never work."""
        with self._connect_lock:
            if self._active() is None:
                self._open()

    def _active(self) -> paramiko.Transport | None:
        transport = self._client.get_transport() if self._client is not None else None
        return transport if transport is not None and transport.is_active() else None

    def _open(self) -> paramiko.Transport:
        """Under _connect_lock: open a new connection, as the limiter allows."""
        now = self.clock()
        try:
            client = self.connector(self.target)
        except HpcopsError as exc:
            self.limiter.attempted(now, ok=False)
            self.last_error = exc.message
            log.warning(
                "SSH connection to %s failed (attempt %d in a row): %s",
                self.where,
                self.limiter.failures,
                exc.message,
            )
            raise
        self.limiter.attempted(now, ok=True)
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_S)
        self._client = client
        self.connections_opened += 1
        log.info(
            "SSH connection %d to %s opened (local port %s)",
            self.connections_opened,
            self.where,
            transport.sock.getsockname()[1] if hasattr(transport.sock, "getsockname") else "?",
        )
        return transport

    def _connection(self) -> paramiko.Transport:
        """The open connection, reopened if it was lost and the limiter allows it."""
        with self._connect_lock:
            active = self._active()
            if active is not None:
                return active
            if self._client is not None:
                self._forget_client("it was closed")
            now = self.clock()
            if not self.limiter.may_connect(now):
                wait_s = self.limiter.next_allowed_at() - now
                last = f"; last error: {self.last_error}" if self.last_error else ""
                raise TransportError(
                    f"not connected to {self.where}; next attempt in {wait_s:.0f} s (at most one "
                    f"new connection per {self.limiter.min_interval_s:.0f} s){last}"
                )
            try:
                return self._open()
            except HpcopsError as exc:
                raise TransportError(exc.message) from None

    def _forget_client(self, why: str) -> None:
        assert self._client is not None
        log.warning("SSH connection to %s lost: %s", self.where, why)
        self._client.close()
        self._client = None

    def _lost(self, transport: paramiko.Transport, exc: BaseException) -> TransportError:
        """The connection broke under a call: drop it (unless another thread already replaced
        it) and say so. The next call reconnects, as the limiter allows."""
        with self._connect_lock:
            if self._client is not None and self._client.get_transport() is transport:
                self._forget_client(str(exc) or type(exc).__name__)
        return TransportError(f"lost the SSH connection to {self.where}: {exc or 'closed'}")

    def close(self) -> None:
        with self._sftp_lock:
            if self._sftp is not None:
                self._sftp.close()
            self._sftp = self._sftp_of = None
        with self._connect_lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    # --- commands ---------------------------------------------------------------------------

    def run(self, argv: list[str], *, timeout_s: float, stdin: str | None = None) -> CommandResult:
        started = time.monotonic()
        deadline = started + timeout_s
        transport = self._connection()
        # Quoting happens here, once: the words cross into the remote user's login shell.
        # C locale: parsers read Slurm's English messages and dates.
        command = shlex.join(["env", "LC_ALL=C", *argv])
        channel: paramiko.Channel | None = None
        try:
            channel = transport.open_session(timeout=timeout_s)
            channel.exec_command(command)
            if stdin is not None:
                channel.settimeout(timeout_s)
                channel.sendall(stdin.encode("utf-8"))
            channel.shutdown_write()
            stdout = _read_all(channel, channel.recv, deadline)
            # Slurm's commands write little to stderr; read after stdout (paramiko buffers it).
            stderr = _read_all(channel, channel.recv_stderr, deadline)
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError
            status = channel.recv_exit_status()
        except TimeoutError:
            if channel is not None:
                channel.close()
            if self._active() is not transport:
                raise self._lost(transport, EOFError("closed during the command")) from None
            raise TransportError(
                f"{' '.join(argv)}: no answer after {timeout_s:.0f} s on {self.where}"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(transport, exc) from None
        finally:
            if channel is not None:
                channel.close()
        if status == -1:
            # paramiko's value when the channel closed without an exit status: the connection
            # (or the server's process for it) died mid-command. The command may or may not have
            # run; for sbatch, the SUBMITTING token settles which.
            raise self._lost(transport, EOFError("closed before the command's exit status"))
        text_err = stderr.decode("utf-8", errors="replace")
        if status == 127 and "not found" in text_err:
            raise TransportError(f"{argv[0]}: command not found on {self.where}: {text_err}")
        return CommandResult(
            tuple(argv),
            status,
            stdout.decode("utf-8", errors="replace"),
            text_err,
            time.monotonic() - started,
        )

    # --- files ------------------------------------------------------------------------------

    def read_small_files(self, paths: Sequence[PurePath]) -> dict[PurePath, str]:
        if not paths:
            return {}
        result = self.run(
            ["bash", "-c", _READ_SMALL_FILES],
            timeout_s=self.io_timeout_s,
            stdin="".join(f"{p}\n" for p in paths),
        )
        if result.returncode != 0:
            raise TransportError(
                f"reading {len(paths)} marker files on {self.where} failed "
                f"(exit {result.returncode}): {result.stderr.strip()}"
            )
        return parse_small_files(paths, result.stdout)

    def write_file(self, path: PurePath, data: str, mode: int = 0o640) -> None:
        tmp = path.with_name(f".{path.name}.tmp")

        def write(sftp: paramiko.SFTPClient) -> None:
            with sftp.open(str(tmp), "wb") as f:
                f.chmod(mode)
                f.write(data.encode("utf-8"))
            # Then rename: a reader (sbatch) never sees half a script.
            sftp.posix_rename(str(tmp), str(path))

        self._sftp_call(write)

    def make_dir(self, path: PurePath, mode: int = 0o750) -> None:
        def make(sftp: paramiko.SFTPClient, target: PurePath) -> None:
            try:
                sftp.mkdir(str(target), mode)
                return
            except OSError:
                pass  # exists, or a parent is missing: stat says which
            try:
                found = sftp.stat(str(target))
            except FileNotFoundError:
                if target.parent == target:
                    raise
                make(sftp, target.parent)
                sftp.mkdir(str(target), mode)
                return
            if not stat.S_ISDIR(found.st_mode or 0):
                raise NotADirectoryError(f"{target} exists on {self.where} and is not a directory")

        self._sftp_call(lambda sftp: make(sftp, path))

    def remove_files(self, paths: Sequence[PurePath]) -> None:
        def remove(sftp: paramiko.SFTPClient) -> None:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    sftp.remove(str(path))

        self._sftp_call(remove)

    def read_chunk(self, path: PurePath, offset: int, max_bytes: int) -> FileChunk:
        def read(sftp: paramiko.SFTPClient) -> FileChunk:
            try:
                found = sftp.lstat(str(path))
            except FileNotFoundError:
                return FileChunk(b"", max(offset, 0), 0)
            # The job owns its logs' paths: opening a FIFO would hang the SFTP session, and a
            # link is not its log (lstat: not followed). What sftp-server reads is the cluster
            # account's, which the jobs have anyway; the daemon's own secrets are not there.
            if not stat.S_ISREG(found.st_mode or 0):
                return FileChunk(b"", max(offset, 0), 0)
            with sftp.open(str(path), "rb") as f:
                opened = f.stat()
                if not stat.S_ISREG(opened.st_mode or 0):  # swapped since the lstat
                    return FileChunk(b"", max(offset, 0), 0)
                size = opened.st_size or 0
                start = max(0, size + offset) if offset < 0 else min(offset, size)
                f.seek(start)
                return FileChunk(f.read(max_bytes), start, size)

        return self._sftp_call(read)

    def _sftp_call(self, operation: Callable[[paramiko.SFTPClient], T]) -> T:
        """Run one file operation on the SFTP session of the open connection. A broken connection
        becomes TransportError; a file's own error (missing, permission) stays an OSError, as it
        would be on the local filesystem."""
        with self._sftp_lock:
            transport = self._connection()
            try:
                if self._sftp is None or self._sftp_of is not transport:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                    if self._sftp is None:
                        raise paramiko.SSHException("the server refused the sftp subsystem")
                    self._sftp_of = transport
                    self._sftp.get_channel().settimeout(self.io_timeout_s)  # type: ignore[union-attr]
                return operation(self._sftp)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if transport.is_active() and not isinstance(exc, (paramiko.SSHException, EOFError)):
                    raise  # the file's error, on a healthy connection
                self._sftp = self._sftp_of = None
                raise self._lost(transport, exc) from None


def _read_all(channel: paramiko.Channel, receive: Callable[[int], bytes], deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        channel.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = receive(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
