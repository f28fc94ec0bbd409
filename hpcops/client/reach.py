"""How a CLI call reaches a remote: through the user's own OpenSSH or through paramiko, and why;
and what `hpcops remote check` reports.

A remote's `transport`:

    openssh    run the user's `ssh` binary (client/openssh.py)
    paramiko   hpcops' own SSH client (client/remote.py): no `ssh` binary needed, but it reads
               only HostName, User, Port, IdentityFile and ProxyJump from ~/.ssh/config
    auto       openssh when an `ssh` binary is on PATH and `ssh -G host` (the effective config,
               computed without connecting) shows a ControlMaster or ControlPath for the host --
               a master connection is the one thing paramiko can never use -- or a ProxyCommand,
               which paramiko's path ignores; paramiko otherwise

`choose` is the pure decision; `open_remote` and `check` do the I/O around it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any

from hpcops.api.protocol import LineClient
from hpcops.client.config import Remote, client_config_path
from hpcops.errors import (
    ConfigError,
    HpcopsError,
    NotRunning,
    ProtocolError,
    RemoteUnreachable,
)


@dataclass(frozen=True)
class Choice:
    transport: str  # "openssh" | "paramiko"
    reason: str


def _set(options: dict[str, str], key: str) -> str | None:
    value = options.get(key, "")
    return None if value.lower() in ("", "none", "no", "false") else value


def choose(remote: Remote, ssh: str | None, options: dict[str, str] | None) -> Choice:
    """The transport for `remote`, given the `ssh` binary found on PATH (None: none) and what
    `ssh -G` printed for it (None: not asked, or it failed)."""
    if remote.transport == "paramiko":
        return Choice("paramiko", "the remote says transport: paramiko")
    if remote.transport == "openssh":
        return Choice("openssh", "the remote says transport: openssh")
    if ssh is None:
        return Choice("paramiko", "auto: no `ssh` binary on PATH")
    if options is None:
        return Choice("paramiko", f"auto: `ssh -G {remote.host}` gave no answer")
    master, path = _set(options, "controlmaster"), _set(options, "controlpath")
    if master or path:
        shown = ", ".join(
            f"{key} {value}"
            for key, value in (("ControlMaster", master), ("ControlPath", path))
            if value
        )
        return Choice("openssh", f"auto: `ssh -G {remote.host}` shows {shown}")
    proxy = _set(options, "proxycommand")
    if proxy:
        return Choice("openssh", f"auto: `ssh -G {remote.host}` shows ProxyCommand {proxy}")
    return Choice(
        "paramiko",
        f"auto: `ssh -G {remote.host}` shows no ControlMaster, ControlPath or ProxyCommand",
    )


def api_exit_error(name: str, remote: Remote, status: int, stderr: str) -> HpcopsError:
    """Why `hpcops api` on the remote ended instead of answering, from its exit status and
    stderr; the same whichever transport carried it."""
    command = " ".join(remote.command)
    if status == 127:
        return RemoteUnreachable(
            f"`{command}` is not found on remote {name!r} (exit 127): install hpcops "
            f"there or set remotes.{name}.command to its full path"
        )
    detail = f": {stderr}" if stderr else ""
    if "No such command" in stderr:
        return ProtocolError(
            f"the hpcops on remote {name!r} has no `api` command: it is older than "
            f"this client; install the same version on both ends{detail}"
        )
    return NotRunning(f"`{command} api` on remote {name!r} exited {status}{detail}")


def _decide(name: str, remote: Remote) -> tuple[Choice, str | None, dict[str, str] | None]:
    """The choice, the ssh binary and (when asked) its effective config for this remote."""
    ssh = shutil.which("ssh")
    options: dict[str, str] | None = None
    if remote.transport == "openssh" and ssh is None:
        raise ConfigError(
            f"remote {name!r} says transport: openssh, but no `ssh` binary is on PATH; "
            f"install OpenSSH's client or set transport: paramiko in {client_config_path()}"
        )
    if remote.transport == "auto" and ssh is not None:
        from hpcops.client.openssh import effective_config

        try:
            options = effective_config(remote, ssh)
        except HpcopsError:
            options = None
    return choose(remote, ssh, options), ssh, options


def open_remote(name: str, remote: Remote) -> LineClient:
    """A client for `remote`; no connection is made until its first call."""
    choice, ssh, options = _decide(name, remote)
    return _client(name, remote, choice, ssh, options)


def _client(
    name: str, remote: Remote, choice: Choice, ssh: str | None, options: dict[str, str] | None
) -> LineClient:
    if choice.transport == "openssh":
        from hpcops.client.openssh import OpenSshClient

        assert ssh is not None
        return OpenSshClient(name, remote, ssh, options)
    from hpcops.transport.lean_paramiko import skip_invoke_unless_needed

    skip_invoke_unless_needed()  # before paramiko is imported: every call pays it
    from hpcops.client.remote import RemoteClient

    return RemoteClient(name, remote)


def check(name: str, remote: Remote) -> tuple[dict[str, Any], int]:
    """What `hpcops remote check` reports, and its exit code (0 when `hpcops api` answered, else
    the exit code of the error that stopped it)."""
    choice, ssh, options = _decide(name, remote)
    report: dict[str, Any] = {
        "remote": name,
        "transport": choice.transport,
        "reason": choice.reason,
        "ssh_binary": ssh,
    }
    if choice.transport == "openssh":
        from hpcops.client.openssh import check_master, effective_config

        assert ssh is not None
        try:
            options = options or effective_config(remote, ssh)
        except HpcopsError as exc:
            report["target"] = {"error": exc.message}
            return report, exc.exit_code
        report["target"] = {
            "host": options.get("hostname", remote.host),
            "user": options.get("user"),
            "port": int(options.get("port", "22")),
            "proxyjump": _set(options, "proxyjump"),
            "proxycommand": _set(options, "proxycommand"),
            "controlpath": _set(options, "controlpath"),
            "source": f"ssh -G {remote.host}",
        }
        state = check_master(remote, ssh)
        report["master"] = {"open": state.open, "detail": state.detail}
    else:
        from hpcops.transport.ssh_connect import SshTarget, resolve

        r = resolve(SshTarget(remote.host, f"remote {name!r}", "", remote.user, remote.port))
        report["target"] = {
            "host": r.hostname,
            "user": r.user,
            "port": r.port,
            "proxyjump": r.proxy_jump,
            "source": "paramiko's reading of ~/.ssh/config",
        }
        report["master"] = {"open": None, "detail": "paramiko cannot use a master connection"}
    started = time.perf_counter()
    client = _client(name, remote, choice, ssh, options)
    try:
        pong = client.call("ping")
    except HpcopsError as exc:
        report["api"] = {"ok": False, "error": exc.message}
        return report, exc.exit_code
    finally:
        client.close()
    report["api"] = {
        "ok": True,
        "round_trip_ms": round((time.perf_counter() - started) * 1000, 1),
        "version": pong.get("version"),
        "caller": pong.get("caller"),
        "lab": pong.get("lab"),
    }
    if choice.transport == "openssh":
        assert ssh is not None
        report["forward"] = _forward_report(name, remote, ssh, options)
    return report, 0


def _forward_report(
    name: str, remote: Remote, ssh: str, options: dict[str, str] | None
) -> dict[str, Any]:
    """The master's forward to the daemon's socket (client/forward.py): added if it can be
    (the `ping` above taught the laptop where the socket is), then one timed round trip on it."""
    from hpcops.client.openssh import OpenSshClient

    client = OpenSshClient(name, remote, ssh, options)
    try:
        client.call("ping")
        attempt = client.attempt
        assert attempt is not None
        fwd = attempt.forward
        report: dict[str, Any] = {
            "local": str(fwd.local) if fwd else None,
            "remote": fwd.remote if fwd else None,
            "up": client.forwarded,
            "detail": attempt.detail,
        }
        if client.forwarded:
            started = time.perf_counter()
            client.call("ping")
            report["round_trip_ms"] = round((time.perf_counter() - started) * 1000, 2)
    except HpcopsError as exc:
        return {"up": False, "detail": exc.message}
    finally:
        client.close()
    return report
