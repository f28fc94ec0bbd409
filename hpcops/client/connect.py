"""Which daemon a CLI call talks to, and the one connection it uses: shared by the click CLI
(`cli/context.py`) and the fast entry (`cli/fast.py`), so both reach the same daemon the same way.

    --remote NAME (or $HPCOPS_REMOTE)        that remote of the client config, over SSH
    no remote named, a client config         its default_remote, if it names one
    --home DIR (or $HPCOPS_HOME)             the local socket under DIR, whatever the config says
    otherwise                                the local socket under ~/.hpcops
"""

from __future__ import annotations

import os

# The fast entry's submit imports this: nothing at run time beyond os (see hpcops/home.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hpcops.api.protocol import LineClient


def open_client(
    explicit_home: str | os.PathLike[str] | None, remote_name: str | None
) -> LineClient:
    """A client for the daemon this call means; no connection is made until its first call."""
    from hpcops.client.config_path import client_config_text

    chosen = None
    # No remote named and no client config to name one: the local socket, without reading a
    # config (every import here is paid by every CLI call on the login node).
    if remote_name is not None or os.path.exists(client_config_text()):
        from hpcops.client.config import load_client_config

        chosen = load_client_config().remote(remote_name)
    if chosen is not None and explicit_home is None:
        from hpcops.client.reach import open_remote

        return open_remote(*chosen)
    from hpcops.client.client import Client
    from hpcops.home import default_home_text, socket_in

    return Client(socket_in(explicit_home or default_home_text()))
