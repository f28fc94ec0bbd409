"""What every command gets: the call's `Context` (home, --debug, which daemon to talk to) and
the options all read commands share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from hpcops.api.protocol import LineClient

# The run states as the API names them (hpcops.states.RunState, in its order; a unit test keeps
# the two equal). Spelled out here so that `hpcops --help` need not import the states module.
STATE_NAMES = (
    "QUEUED",
    "HELD",
    "STAGING",
    "SUBMITTING",
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "UNKNOWN",
)
ACTIVE = ("QUEUED", "HELD", "STAGING", "SUBMITTING", "PENDING", "RUNNING")


class Context:
    """One CLI call: the daemon's home, --debug, and the one connection to the daemon's API."""

    def __init__(self, home: Path | None, debug: bool, remote: str | None) -> None:
        self.explicit_home = home
        self.debug = debug
        self.remote_name = remote
        self._client: LineClient | None = None

    @property
    def home(self) -> Path:
        from hpcops.home import default_home

        return self.explicit_home or default_home()

    def client(self) -> LineClient:
        """The daemon's API: over SSH when a remote is named (--remote, or the client config's
        default_remote; OpenSSH or paramiko, see client/reach.py), else the local socket.
        Either way one connection serves the call."""
        if self._client is None:
            from hpcops.client.connect import open_client

            self._client = open_client(self.explicit_home, self.remote_name)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def call(self, method: str, **params: Any) -> Any:
        return self.client().call(method, **params)


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (a stable interface, see the README) instead of text.",
)
