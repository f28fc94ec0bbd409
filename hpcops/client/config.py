"""The client config: named remotes, each a login node where a lab's daemon runs.

    # ~/.config/hpcops/config.yaml  (or the file named by HPCOPS_CONFIG)
    default_remote: cluster
    remotes:
      cluster:
        host: login.cluster.example.edu   # an SSH host; ~/.ssh/config applies (HostName, User,
                                          # Port, IdentityFile, ProxyJump)
        command: hpcops                   # how to run hpcops on the login node
        home: /scratch/lab/.hpcops        # the daemon's HPCOPS_HOME there (default: its own)

Identity on the cluster is the SSH user, as the login node's operating system knows it: no
passwords or tokens of hpcops' own.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Re-exported: callers (remote.py) name it from here, beside the config it locates.
from hpcops.client.config_path import client_config_path as client_config_path
from hpcops.errors import ConfigError
from hpcops.yamlio import Document, YamlProblems, read_bounded, read_yaml

# Read by hpcops' one YAML reader, as the daemon's config is: YAML 1.2 scalars, no anchors,
# aliases or tags, at most 1 MiB, read without reading a bigger file whole.
CLIENT_CONFIG = Document(
    "client config", "a client config needs four at most", "A client config names a few remotes"
)
_HOST = re.compile(r"^[A-Za-z0-9_.@:\[\]-]{1,255}$")
_COMMAND_WORD = re.compile(r"^[A-Za-z0-9_./+=:-]{1,255}$")


class Remote(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(description="SSH host name or ~/.ssh/config alias.")
    user: str | None = Field(default=None, description="Overrides ~/.ssh/config's User.")
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: Path | None = None
    command: list[str] = Field(
        default_factory=lambda: ["hpcops"],
        description="The remote hpcops command, as words (e.g. [/opt/lab/venv/bin/hpcops]).",
    )
    home: str | None = Field(default=None, description="The daemon's HPCOPS_HOME on the host.")
    connect_timeout_s: float = Field(default=15.0, gt=0, le=300)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST.fullmatch(value):
            raise ValueError("must be a host name or an ~/.ssh/config alias")
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: object) -> object:
        words = value.split() if isinstance(value, str) else value
        if not isinstance(words, list) or not words:
            raise ValueError("must be a command, e.g. hpcops or /opt/lab/venv/bin/hpcops")
        for word in words:
            # The words cross into the remote user's shell: plain words only, no quoting games.
            if not isinstance(word, str) or not _COMMAND_WORD.fullmatch(word):
                raise ValueError(f"{word!r}: only letters, digits and _ . / + = : - in a word")
        return words

    @field_validator("home")
    @classmethod
    def _home(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"/[A-Za-z0-9_./+-]*", value):
            raise ValueError("must be an absolute path of plain characters")
        return value


class ClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_remote: str | None = None
    remotes: dict[str, Remote] = Field(default_factory=dict)

    def remote(self, name: str | None) -> tuple[str, Remote] | None:
        """The remote to use: the named one, else the default, else None (talk locally)."""
        chosen = name or self.default_remote
        if chosen is None:
            return None
        if chosen not in self.remotes:
            known = ", ".join(sorted(self.remotes)) or "none are configured"
            raise ConfigError(f"no remote {chosen!r} in {client_config_path()}; known: {known}")
        return chosen, self.remotes[chosen]


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
    try:
        return ClientConfig.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: invalid client config\n{problems}") from None
