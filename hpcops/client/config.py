"""The client config: named remotes, each a login node where a lab's daemon runs.

    # ~/.config/hpcops/config.yaml  (or the file named by HPCOPS_CONFIG)
    default_remote: cluster
    remotes:
      cluster:
        host: login.cluster.example.edu   # an SSH host; ~/.ssh/config applies (HostName, User,
                                          # Port, IdentityFile, ProxyJump, ControlMaster, ...)
        command: hpcops                   # how to run hpcops on the login node
        home: /scratch/lab/.hpcops        # the daemon's HPCOPS_HOME there (default: its own)
        transport: auto                   # openssh | paramiko | auto (see client/transport.py)
        socket: /scratch/lab/.hpcops/hpcops.sock  # the daemon's socket there, for the forward
                                          # over an OpenSSH master (default: learnt from it)

Identity on the cluster is the SSH user, as the login node's operating system knows it: no
passwords or tokens of hpcops' own.

Checked by hand rather than by pydantic: every laptop call reads this file, and pydantic's import
(~0.13 s) would be most of what an `hpcops ls` over an open OpenSSH master costs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

# Re-exported: callers (remote.py) name it from here, beside the config it locates.
from hpcops.client.config_path import client_config_path as client_config_path
from hpcops.errors import ConfigError, FieldProblem
from hpcops.yamlio import Document, YamlProblems, read_bounded, read_yaml

# Read by hpcops' one YAML reader, as the daemon's config is: YAML 1.2 scalars, no anchors,
# aliases or tags, at most 1 MiB, read without reading a bigger file whole.
CLIENT_CONFIG = Document(
    "client config", "a client config needs four at most", "A client config names a few remotes"
)
# No leading '-': the host becomes an argument of `ssh`, which would read it as an option.
_HOST = re.compile(r"^[A-Za-z0-9_.@:\[\]][A-Za-z0-9_.@:\[\]-]{0,254}$")
_COMMAND_WORD = re.compile(r"^[A-Za-z0-9_./+=:-]{1,255}$")
_HOME = re.compile(r"/[A-Za-z0-9_./+-]*")
TRANSPORTS = ("auto", "openssh", "paramiko")
Transport = Literal["auto", "openssh", "paramiko"]


@dataclass(frozen=True)
class Remote:
    host: str  # SSH host name or ~/.ssh/config alias
    user: str | None = None  # overrides ~/.ssh/config's User
    port: int | None = None
    identity_file: Path | None = None
    # The remote hpcops command, as words (e.g. [/opt/lab/venv/bin/hpcops]).
    command: list[str] = field(default_factory=lambda: ["hpcops"])
    home: str | None = None  # the daemon's HPCOPS_HOME on the host
    connect_timeout_s: float = 15.0
    transport: Transport = "auto"
    # The daemon's socket on the host, for client/forward.py; None: learnt from its `ping`.
    socket: str | None = None


class _Problems:
    """Collects every problem of one config, each under its dotted location."""

    def __init__(self) -> None:
        self.found: list[FieldProblem] = []

    def add(self, location: str, message: str) -> None:
        self.found.append(FieldProblem(location, message))


def _text(pattern: re.Pattern[str], message: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(message)
        return value

    return check


def _port(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"must be a TCP port, 1 to 65535, not {value!r}")
    return value


def _timeout(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 300:
        raise ValueError(f"must be a number of seconds, more than 0 and at most 300, not {value!r}")
    return float(value)


def _command(value: object) -> object:
    words = value.split() if isinstance(value, str) else value
    if not isinstance(words, list) or not words:
        raise ValueError("must be a command, e.g. hpcops or /opt/lab/venv/bin/hpcops")
    for word in words:
        # The words cross into the remote user's shell: plain words only, no quoting games.
        if not isinstance(word, str) or not _COMMAND_WORD.fullmatch(word):
            raise ValueError(f"{word!r}: only letters, digits and _ . / + = : - in a word")
    if words[0].startswith("-"):
        raise ValueError(f"{words[0]!r}: the first word is the program, not an option")
    return list(words)


def _transport(value: object) -> object:
    if value not in TRANSPORTS:
        raise ValueError(f"must be one of {', '.join(TRANSPORTS)}, not {value!r}")
    return value


def _identity(value: object) -> object:
    if not isinstance(value, str) or not value or "\n" in value:
        raise ValueError("must be the path of a private key file")
    return Path(value)


def valid_socket_path(value: object) -> bool:
    """An absolute path of plain characters (it goes into `ssh -L LOCAL:REMOTE`, where a ':'
    would split it), no '..', short enough for a Unix socket (107 bytes and a NUL)."""
    return (
        isinstance(value, str)
        and _HOME.fullmatch(value) is not None
        and len(value.encode()) <= 107
        and ".." not in value.split("/")
    )


def _socket(value: object) -> object:
    if not valid_socket_path(value):
        raise ValueError(
            "must be the absolute path of the daemon's socket, plain characters, no '..', at "
            "most 107 bytes, e.g. /scratch/lab/.hpcops/hpcops.sock"
        )
    return value


_REMOTE_FIELDS: dict[str, Callable[[object], object]] = {
    "host": _text(_HOST, "must be a host name or an ~/.ssh/config alias"),
    "user": _text(re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"), "must be a user name"),
    "port": _port,
    "identity_file": _identity,
    "command": _command,
    "home": _text(_HOME, "must be an absolute path of plain characters"),
    "connect_timeout_s": _timeout,
    "transport": _transport,
    "socket": _socket,
}


def _remote(data: object, where: str, problems: _Problems) -> Remote | None:
    if not isinstance(data, dict):
        problems.add(where, "must be a mapping with at least `host`")
        return None
    values: dict[str, Any] = {}
    ok = True
    for key, value in data.items():
        check = _REMOTE_FIELDS.get(key)
        if check is None:
            problems.add(f"{where}.{key}", f"unknown field; known: {', '.join(_REMOTE_FIELDS)}")
            ok = False
            continue
        if value is None and key != "host":
            continue  # null = the default
        try:
            values[key] = check(value)
        except ValueError as exc:
            problems.add(f"{where}.{key}", str(exc))
            ok = False
    if "host" not in data:
        problems.add(f"{where}.host", "missing: every remote needs its SSH host")
        ok = False
    return Remote(**values) if ok else None


@dataclass(frozen=True)
class ClientConfig:
    default_remote: str | None = None
    remotes: dict[str, Remote] = field(default_factory=dict)

    def remote(self, name: str | None) -> tuple[str, Remote] | None:
        """The remote to use: the named one, else the default, else None (talk locally)."""
        chosen = name or self.default_remote
        if chosen is None:
            return None
        if chosen not in self.remotes:
            known = ", ".join(sorted(self.remotes)) or "none are configured"
            raise ConfigError(f"no remote {chosen!r} in {client_config_path()}; known: {known}")
        return chosen, self.remotes[chosen]


def parse_client_config(data: object) -> ClientConfig:
    """The config from plain data (as the YAML reader gives it), or ConfigError naming every
    field that is wrong."""
    problems = _Problems()
    if not isinstance(data, dict):
        problems.add("", "must be a mapping with `remotes` (and optionally `default_remote`)")
        data = {}
    for key in data:
        if key not in ("default_remote", "remotes"):
            problems.add(str(key), "unknown field; known: default_remote, remotes")
    default = data.get("default_remote")
    if default is not None and not isinstance(default, str):
        problems.add("default_remote", "must be the name of a remote")
    raw_remotes = data.get("remotes") or {}
    remotes: dict[str, Remote] = {}
    if not isinstance(raw_remotes, dict):
        problems.add("remotes", "must be a mapping of names to remotes")
        raw_remotes = {}
    for name, raw in raw_remotes.items():
        remote = _remote(raw, f"remotes.{name}", problems)
        if remote is not None:
            remotes[str(name)] = remote
    if problems.found:
        lines = "\n".join(f"  {p}" for p in problems.found)
        raise ConfigError(f"{client_config_path()}: invalid client config\n{lines}")
    return ClientConfig(cast("str | None", default), remotes)


def load_client_config() -> ClientConfig:
    path = client_config_path()
    try:
        data = read_yaml(read_bounded(path, CLIENT_CONFIG), CLIENT_CONFIG) or {}
    except FileNotFoundError:
        return ClientConfig()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except YamlProblems as exc:
        problems = "\n".join(
            f"  {p.location}: {p.message}" if p.location else f"  {p.message}" for p in exc.problems
        )
        raise ConfigError(f"{path}: not a client config hpcops reads\n{problems}") from None
    return parse_client_config(data)
