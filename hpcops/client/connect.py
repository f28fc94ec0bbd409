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
    from hpcops.client.route import RouteKey
    from hpcops.errors import HpcopsError


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


def open_routed(
    explicit_home: str | os.PathLike[str] | None, remote_name: str | None
) -> tuple[LineClient, RouteKey | None]:
    """The fast entry's submit: over the forward the last submit used, while it is fresh
    (client/route.py: no config read, no OpenSSH module imported); else `open_client`, with the
    key under which `remember_route` keeps the way this call takes."""
    if explicit_home is not None:
        return open_client(explicit_home, remote_name), None
    from hpcops.client import route
    from hpcops.client.config_path import client_config_text

    key = route.route_key(remote_name, client_config_text())
    if key is None:
        return open_client(None, remote_name), None
    routed = route.open_route(key)
    if routed is not None:
        return routed, key
    return open_client(None, remote_name), key


def remember_route(key: RouteKey | None, client: LineClient) -> None:
    """After a call that answered: keep its way for the next, when it was a forward."""
    found = client.route() if key is not None else None
    if key is not None and found is not None:
        from hpcops.client import route

        route.remember(key, *found)


def drop_route(key: RouteKey | None, client: LineClient, error: HpcopsError) -> None:
    """After a call over a remembered route that the far end did not answer (the daemon moved
    or stopped while the master lived on): forget the route, so that the next call goes the
    full way, which finds where the daemon listens now. Not retried here: the request may have
    reached the daemon."""
    from hpcops.errors import NotRunning, ProtocolError

    if key is None or not isinstance(error, NotRunning | ProtocolError):
        return
    from hpcops.client import route

    if isinstance(client, route.RoutedClient):
        route.forget(key)
