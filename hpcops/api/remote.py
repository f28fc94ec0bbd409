"""The API from a laptop: paramiko runs `hpcops api` on the login node over one exec channel and
speaks the same newline-delimited JSON as the Unix socket. `hpcops api` forwards each request to
the daemon's socket as the SSH user, so the daemon's SO_PEERCRED check sees who really called.

One SSH connection per CLI call, reused for everything that call does. Host keys are checked
against known_hosts and never added silently. paramiko loads here only, so a local `hpcops`
never pays for it.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import shlex
import socket
from pathlib import Path
from typing import Any

import paramiko

from hpcops.api import protocol
from hpcops.client_config import Remote
from hpcops.errors import (
    AuthenticationFailed,
    HostKeyRejected,
    HpcopsError,
    NotRunning,
    PermissionDenied,
    ProtocolError,
    RemoteUnreachable,
)

KNOWN_HOSTS = Path("~/.ssh/known_hosts")
SSH_CONFIG = Path("~/.ssh/config")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: `ssh-ed25519 SHA256:...` (what `ssh-keygen -lf` prints)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def _host_label(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """Never trust on first use: an unknown host key is refused with what the user needs to
    decide (the fingerprint) and to act (how to record it after checking it)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyRejected(
            f"the host key of {_host_label(hostname, self.port)} is not in {KNOWN_HOSTS}: "
            f"{fingerprint(key)}. Check it with the cluster's admins, then record it with "
            f"`ssh -p {self.port} {hostname} true` (answer yes) or "
            f"`ssh-keyscan -p {self.port} {hostname} >> {KNOWN_HOSTS}`. Nothing was added."
        )


def _resolve(remote: Remote) -> tuple[str, int, str, list[str], str | None]:
    """hostname, port, user, key files and ProxyJump for a remote, with ~/.ssh/config applied."""
    options: dict[str, Any] = {}
    config_path = SSH_CONFIG.expanduser()
    if config_path.exists():
        options = dict(paramiko.SSHConfig.from_path(str(config_path)).lookup(remote.host))
    hostname = str(options.get("hostname", remote.host))
    port = remote.port or int(options.get("port", 22))
    user = remote.user or str(options.get("user") or getpass.getuser())
    keys = (
        [str(remote.identity_file)]
        if remote.identity_file
        else [str(Path(k).expanduser()) for k in options.get("identityfile", [])]
    )
    jump = options.get("proxyjump")
    return hostname, port, user, keys, str(jump) if jump else None


def connect(remote: Remote, name: str) -> paramiko.SSHClient:
    """One authenticated SSH connection to a remote, or a clear error saying what failed."""
    hostname, port, user, keys, jump = _resolve(remote)
    where = f"{user}@{_host_label(hostname, port)} (remote {name!r})"
    sock: Any = None
    if jump is not None:
        jump_remote = Remote(host=jump.split(",")[0], connect_timeout_s=remote.connect_timeout_s)
        jump_client = connect(jump_remote, f"{name} via ProxyJump {jump}")
        transport = jump_client.get_transport()
        assert transport is not None
        sock = transport.open_channel("direct-tcpip", (hostname, port), ("127.0.0.1", 0))
    client = paramiko.SSHClient()
    known = KNOWN_HOSTS.expanduser()
    if known.exists():
        client.load_host_keys(str(known))  # load_host_keys, not system keys: never saved back
    client.set_missing_host_key_policy(_RefuseUnknownHost(port))
    try:
        client.connect(
            hostname,
            port=port,
            username=user,
            # paramiko takes a list of key files too (SSHClient.connect's docs); its stubs say str
            key_filename=keys or None,  # type: ignore[arg-type]
            sock=sock,
            timeout=remote.connect_timeout_s,
            banner_timeout=remote.connect_timeout_s,
            auth_timeout=remote.connect_timeout_s,
            look_for_keys=not keys,
            allow_agent=True,
        )
    except HostKeyRejected:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRejected(
            f"the host key of {_host_label(hostname, port)} has CHANGED: it offered "
            f"{fingerprint(exc.key)}, {KNOWN_HOSTS} has {fingerprint(exc.expected_key)}. "
            "Someone may be intercepting the connection; if the admins confirm the new key, "
            f"remove the old one with `ssh-keygen -R '{_host_label(hostname, port)}'`."
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise AuthenticationFailed(
            f"{where} refused our SSH keys ({exc}); keys tried: "
            f"{', '.join(keys) if keys else 'the agent and ~/.ssh/id_*'}. "
            "Check IdentityFile in ~/.ssh/config and that your public key is in the login "
            "node's ~/.ssh/authorized_keys."
        ) from None
    except socket.gaierror as exc:
        client.close()
        raise RemoteUnreachable(
            f"cannot resolve {hostname!r} (remote {name!r}): {exc.strerror}; check the host in "
            "your hpcops client config or ~/.ssh/config"
        ) from None
    except TimeoutError:
        client.close()
        raise RemoteUnreachable(
            f"{where} did not answer within {remote.connect_timeout_s:.0f} s (timeout); is the "
            "VPN up?"
        ) from None
    except (paramiko.SSHException, OSError) as exc:
        client.close()
        raise RemoteUnreachable(f"cannot reach {where}: {exc}") from None
    return client


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
        command = " ".join(self.remote.command)
        if status == 127:
            return RemoteUnreachable(
                f"`{command}` is not found on remote {self.name!r} (exit 127): install hpcops "
                f"there or set remotes.{self.name}.command to its full path"
            )
        if status is None:
            return RemoteUnreachable(f"the SSH connection to remote {self.name!r} closed")
        detail = f": {stderr}" if stderr else ""
        if "No such command" in stderr:
            return ProtocolError(
                f"the hpcops on remote {self.name!r} has no `api` command: it is older than "
                f"this client; install the same version on both ends{detail}"
            )
        return NotRunning(f"`{command} api` on remote {self.name!r} exited {status}{detail}")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._ssh is not None:
            self._ssh.close()
        self._channel = self._ssh = self._reader = None
