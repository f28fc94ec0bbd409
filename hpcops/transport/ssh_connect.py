"""One authenticated SSH connection, or an error that says what failed and what to do.

Shared by the laptop's client (api/remote.py) and the daemon's SSH transport (transport/ssh.py):
~/.ssh/config applies (HostName, User, Port, IdentityFile, ProxyJump), host keys are checked
against a known_hosts file and never added silently, and each way of failing (unknown or changed
host key, keys refused, no such host, timeout, refused) gets its own error and message.
paramiko loads here only, so a local `hpcops` never pays for it.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paramiko

from hpcops.errors import AuthenticationFailed, HostKeyRejected, RemoteUnreachable

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
SSH_CONFIG = Path("~/.ssh/config")


@dataclass(frozen=True)
class SshTarget:
    """Where to connect, as the user wrote it (~/.ssh/config fills in what is left out)."""

    host: str
    label: str  # names the setting in messages: "remote 'lab'", "slurm.ssh"
    fix_hint: str  # where the user changes host, user and keys: shown in messages
    user: str | None = None
    port: int | None = None
    identity_file: Path | None = None
    known_hosts: Path = DEFAULT_KNOWN_HOSTS
    connect_timeout_s: float = 15.0


@dataclass(frozen=True)
class Resolved:
    hostname: str
    port: int
    user: str
    key_files: list[str]
    proxy_jump: str | None

    @property
    def host_label(self) -> str:
        return host_label(self.hostname, self.port)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: `ssh-ed25519 SHA256:...` (what `ssh-keygen -lf` prints)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def host_label(hostname: str, port: int) -> str:
    """How known_hosts names a host: bare for port 22, `[host]:port` otherwise."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """Never trust on first use: an unknown host key is refused with what the user needs to
    decide (the fingerprint) and to act (how to record it after checking it)."""

    def __init__(self, port: int, known_hosts: Path) -> None:
        self.port = port
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyRejected(
            f"the host key of {host_label(hostname, self.port)} is not in {self.known_hosts}: "
            f"{fingerprint(key)}. Check it with the cluster's admins, then record it with "
            f"`ssh -p {self.port} {hostname} true` (answer yes) or "
            f"`ssh-keyscan -p {self.port} {hostname} >> {self.known_hosts}`. Nothing was added."
        )


def resolve(target: SshTarget) -> Resolved:
    """hostname, port, user, key files and ProxyJump, with ~/.ssh/config applied."""
    options: dict[str, Any] = {}
    config_path = SSH_CONFIG.expanduser()
    if config_path.exists():
        options = dict(paramiko.SSHConfig.from_path(str(config_path)).lookup(target.host))
    jump = options.get("proxyjump")
    if str(jump).lower() == "none":  # ssh_config(5): `ProxyJump none` turns an earlier one off
        jump = None
    return Resolved(
        hostname=str(options.get("hostname", target.host)),
        port=target.port or int(options.get("port", 22)),
        user=target.user or str(options.get("user") or getpass.getuser()),
        key_files=(
            [str(target.identity_file.expanduser())]
            if target.identity_file
            else [str(Path(k).expanduser()) for k in options.get("identityfile", [])]
        ),
        proxy_jump=str(jump) if jump else None,
    )


def parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """ProxyJump's one hop, `[user@]host[:port]` (ssh_config(5)), as (user, host, port); an
    IPv6 address goes in brackets, `[::1]:2222`."""
    user, _, rest = spec.rpartition("@")
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", rest)
    if not match:
        raise RemoteUnreachable(f"cannot read the ProxyJump host {spec!r}")
    host = match.group(1) or match.group(3)
    port = match.group(2) or match.group(4)
    return user or None, host, int(port) if port else None


class _JumpedClient(paramiko.SSHClient):
    """A connection made through a jump host's direct-tcpip channel: closing it closes the jump
    host's connection too (else each reconnect of the daemon would leave one behind)."""

    jump: paramiko.SSHClient | None = None

    def close(self) -> None:
        super().close()
        if self.jump is not None:
            self.jump.close()
            self.jump = None


def _through_jump(target: SshTarget, r: Resolved) -> tuple[paramiko.SSHClient, Any]:
    """The jump host's connection and a channel from it to the target."""
    assert r.proxy_jump is not None
    if "," in r.proxy_jump:
        raise RemoteUnreachable(
            f"{target.label}: ProxyJump {r.proxy_jump} has more than one hop, which hpcops' "
            "paramiko transport does not follow; use transport: openssh (the laptop), or one hop"
        )
    user, host, port = parse_jump(r.proxy_jump)
    jump = connect(
        replace(
            target,
            host=host,
            label=f"{target.label} via ProxyJump {r.proxy_jump}",
            user=user,
            port=port,
            identity_file=None,
        )
    )
    transport = jump.get_transport()
    assert transport is not None
    try:
        channel = transport.open_channel(
            "direct-tcpip", (r.hostname, r.port), ("127.0.0.1", 0), timeout=target.connect_timeout_s
        )
    except (paramiko.SSHException, OSError, EOFError) as exc:
        jump.close()
        raise RemoteUnreachable(
            f"the jump host {r.proxy_jump} ({target.label}) could not reach {r.host_label}: {exc}"
        ) from None
    return jump, channel


def connect(target: SshTarget) -> paramiko.SSHClient:
    """One authenticated SSH connection, or HostKeyRejected / AuthenticationFailed (exit 5) or
    RemoteUnreachable (exit 3) with a message naming the evidence and the next step."""
    r = resolve(target)
    where = f"{r.user}@{r.host_label} ({target.label})"
    sock: Any = None
    client = _JumpedClient()
    if r.proxy_jump is not None:
        client.jump, sock = _through_jump(target, r)
    known = target.known_hosts.expanduser()
    if known.exists():
        client.load_host_keys(str(known))  # load_host_keys, not system keys: never saved back
    client.set_missing_host_key_policy(_RefuseUnknownHost(r.port, target.known_hosts))
    timeout = target.connect_timeout_s
    try:
        client.connect(
            r.hostname,
            port=r.port,
            username=r.user,
            # paramiko takes a list of key files too (SSHClient.connect's docs); its stubs say str
            key_filename=r.key_files or None,  # type: ignore[arg-type]
            sock=sock,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            look_for_keys=not r.key_files,
            allow_agent=True,
        )
    except HostKeyRejected:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        file_option = "" if target.known_hosts == DEFAULT_KNOWN_HOSTS else f" -f {known}"
        raise HostKeyRejected(
            f"the host key of {r.host_label} has CHANGED: it offered "
            f"{fingerprint(exc.key)}, {target.known_hosts} has {fingerprint(exc.expected_key)}. "
            "Someone may be intercepting the connection; if the admins confirm the new key, "
            f"remove the old one with `ssh-keygen{file_option} -R '{r.host_label}'`."
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise AuthenticationFailed(
            f"{where} refused our SSH keys ({exc}); keys tried: "
            f"{', '.join(r.key_files) if r.key_files else 'the agent and ~/.ssh/id_*'}. "
            f"Check the key in {target.fix_hint} and that its public key is in "
            f"~{r.user}/.ssh/authorized_keys on {r.hostname}."
        ) from None
    except socket.gaierror as exc:
        client.close()
        raise RemoteUnreachable(
            f"cannot resolve {r.hostname!r} ({target.label}): {exc.strerror}; check the host in "
            f"{target.fix_hint}"
        ) from None
    except TimeoutError:
        client.close()
        raise RemoteUnreachable(
            f"{where} did not answer within {timeout:.0f} s (timeout); is the network (VPN) up?"
        ) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise RemoteUnreachable(f"cannot reach {where}: {exc}") from None
    return client
