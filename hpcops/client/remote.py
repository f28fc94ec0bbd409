"""The API from a laptop: paramiko runs `hpcops api` on the login node over one exec channel and
speaks the same newline-delimited JSON as the Unix socket. `hpcops api` forwards each request to
the daemon's socket as the SSH user, so the daemon's SO_PEERCRED check sees who really called.

One SSH connection per CLI call, reused for everything that call does. Connecting (~/.ssh/config,
host keys checked against known_hosts and never added silently, one clear error per way of
failing) is transport/ssh_connect.py's, shared with the daemon's SSH transport. paramiko loads
only with these modules, so a local `hpcops` never pays for it.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import paramiko

from hpcops.api import protocol
from hpcops.client.config import Remote, client_config_path
from hpcops.client.reach import api_exit_error
from hpcops.errors import (
    HpcopsError,
    PermissionDenied,
    RemoteUnreachable,
)
from hpcops.transport.ssh_connect import SshTarget
from hpcops.transport.ssh_connect import connect as ssh_connect


def connect(remote: Remote, name: str) -> paramiko.SSHClient:
    """One authenticated SSH connection to a remote, or a clear error saying what failed."""
    return ssh_connect(
        SshTarget(
            host=remote.host,
            label=f"remote {name!r}",
            fix_hint=f"remotes.{name} in {client_config_path()} or ~/.ssh/config",
            user=remote.user,
            port=remote.port,
            identity_file=remote.identity_file,
            connect_timeout_s=remote.connect_timeout_s,
        )
    )


class RemoteClient(protocol.LineClient):
    """The same `call` as the local Client, carried by `hpcops api` over SSH."""

    def __init__(self, name: str, remote: Remote) -> None:
        super().__init__()
        self.name = name
        self.remote = remote
        self._ssh: paramiko.SSHClient | None = None
        self._channel: paramiko.Channel | None = None
        self._reader: Any = None

    def _open(self) -> None:
        self._ssh = connect(self.remote, self.name)
        argv = [*self.remote.command]
        if self.remote.home:
            argv += ["--home", self.remote.home]
        argv.append("api")
        transport = self._ssh.get_transport()
        assert transport is not None
        channel = transport.open_session()
        channel.exec_command(shlex.join(argv))
        self._channel = channel
        self._reader = channel.makefile("rb")

    def _exchange(self, method: str, line: bytes) -> bytes:
        if self._channel is None:
            self._open()
        assert self._channel is not None
        try:
            self._channel.sendall(line)
            answer: bytes = self._reader.readline()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # The remote command may have ended before it read the request (`hpcops` not
            # found there, exit 127): its exit status says why, not the closed channel.
            self._channel.status_event.wait(timeout=2)
            if self._channel.exit_status_ready() and self._channel.recv_exit_status() >= 0:
                return b""  # _closed() names the cause
            raise RemoteUnreachable(
                f"lost the SSH connection to remote {self.name!r}: {exc}"
            ) from None
        return answer

    def upload(self, local: Path, remote_dir: str, name: str) -> None:
        # SFTP on the connection this call already has: no second login.
        assert self._ssh is not None, "upload comes after a call has opened the connection"
        target = f"{remote_dir}/{name}"
        try:
            sftp = self._ssh.open_sftp()
            try:
                sftp.put(str(local), target, confirm=True)
                sftp.chmod(target, 0o644)  # whatever the umask: the daemon's account reads it
            finally:
                sftp.close()
        except PermissionError as exc:
            raise PermissionDenied(
                f"cannot put the code bundle into {remote_dir} on remote {self.name!r}: {exc}; "
                "the daemon's code folder admits the lab's group (access.socket_group)"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise RemoteUnreachable(
                f"lost the SSH connection to remote {self.name!r} while shipping code: {exc}"
            ) from None

    def _closed(self) -> HpcopsError:
        assert self._channel is not None
        # The exit status travels in its own message, which can arrive just after the EOF that
        # ended our read: wait for it briefly (paramiko sets status_event on it, or on close).
        self._channel.status_event.wait(timeout=5)
        status = self._channel.recv_exit_status() if self._channel.exit_status_ready() else None
        stderr = self._channel.recv_stderr(4096).decode("utf-8", errors="replace").strip()
        if status is None:
            return RemoteUnreachable(f"the SSH connection to remote {self.name!r} closed")
        return api_exit_error(self.name, self.remote, status, stderr)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._ssh is not None:
            self._ssh.close()
        self._channel = self._ssh = self._reader = None
