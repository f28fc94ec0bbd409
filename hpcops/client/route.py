"""The laptop's shortcut for `hpcops submit`: the local end of the master's forward that the
last submit reached the daemon through, remembered so that the next one connects to it at once.

A laptop submit over an open forward spent most of its 0.1 s importing: the client config's
YAML reader, the OpenSSH and forward modules (issue 16). None of that is needed to connect to a
socket that was up a moment ago. After a submit that went through a forward
(`LineClient.route`), the fast entry records which socket that was, for the client config as it
then was, in the forward cache's 0700 directory ($XDG_CACHE_HOME/hpcops, else ~/.cache/hpcops):

    route.json          for the config's default remote
    route-NAME.json     for --remote NAME (a name of [A-Za-z0-9_.-], at most 64 characters)
    {"v": 1, "config": PATH, "stat": [dev, inode, size, mtime_ns], "remote": NAME | null,
     "name": the remote it reached, "socket": LOCAL}

The next submit takes the route only while the config is the same file, unchanged; while the
route file is ours, regular, small and of this shape; while the socket's directory is private;
and only if the socket accepts a connection. Otherwise it takes the full path before it has
sent anything (which makes the forward again and records it anew), and a route whose socket
refuses is dropped. Only the fast entry's submit takes routes: it ships no code, so nothing but
the protocol travels. This module imports only what a submit on the login node does.
"""

from __future__ import annotations

import json
import os
import re
import stat

from hpcops.client.client import Client
from hpcops.errors import HpcopsError, NotRunning, ProtocolError

TYPE_CHECKING = False  # typing is for mypy only (see hpcops/home.py)
if TYPE_CHECKING:
    from pathlib import Path

    # The route file, the client config, that file's identity, the remote name asked for.
    RouteKey = tuple[str, str, list[int], str | None]

ROUTE_VERSION = 1
MAX_ROUTE_BYTES = 4096
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux: the path and its NUL


def cache_dir_text(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """$XDG_CACHE_HOME/hpcops when that is absolute, else ~/.cache/hpcops."""
    base = env.get("XDG_CACHE_HOME", "")
    root = base if base.startswith("/") else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "hpcops")


def private_dir(path: str | os.PathLike[str], *, create: bool) -> bool:
    """Whether `path` is a real directory (not a symlink) that we own and nobody else may enter;
    created 0700 first when asked."""
    if create:
        try:
            os.makedirs(os.path.dirname(os.fspath(path)), mode=0o700, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.getuid()
        and stat.S_IMODE(st.st_mode) & 0o077 == 0
    )


def config_identity(path: str) -> list[int] | None:
    """The client config as a file: device, inode, size and mtime in ns; None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def route_key(
    remote_name: str | None, config: str, env: dict[str, str] | os._Environ[str] = os.environ
) -> RouteKey | None:
    """Where the route for `remote_name` under this config is kept, and what it must match;
    None when no route is kept (no config, or a name that is no file name)."""
    if remote_name is not None and not _NAME_RE.fullmatch(remote_name):
        return None
    identity = config_identity(config)
    if identity is None:
        return None
    name = "route.json" if remote_name is None else f"route-{remote_name}.json"
    return (os.path.join(cache_dir_text(env), name), config, identity, remote_name)


def parse_route(text: bytes, key: RouteKey) -> tuple[str, str] | None:
    """The socket and remote name a route file records for `key`, or None for anything else."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("v") != ROUTE_VERSION:
        return None
    _, config, identity, remote = key
    if data.get("config") != config or data.get("stat") != identity:
        return None  # another config, or this one edited since
    if data.get("remote") != remote:
        return None
    sock, name = data.get("socket"), data.get("name")
    if not isinstance(sock, str) or not sock.startswith("/") or "\0" in sock:
        return None
    if len(os.fsencode(sock)) > SUN_PATH_MAX:
        return None
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return None
    return sock, name


def read_private_file(path: str, limit: int) -> bytes | None:
    """A small file of ours, in a private directory, read without following a link (and a FIFO
    planted there does not hang the call); None for anything else, or past `limit` bytes. The
    one reader of the laptop's cache files: routes here, the forward's remote socket too."""
    if not private_dir(os.path.dirname(path), create=False):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return None
        text = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return text if len(text) <= limit else None


class RoutedClient(Client):
    """The local socket client, on a forward's local end: what it says when the far end lets
    go names the remote, and it never uploads (the fast entry's submit ships no code)."""

    def __init__(self, socket_path: str, remote_name: str) -> None:
        # No time limit on an answer, as on the forward's own socket (client/forward.py): a
        # submit given up on here may still be queued, and a script that retries would queue
        # it twice.
        super().__init__(socket_path, timeout_s=None)
        self.remote_name = remote_name

    def _closed(self) -> HpcopsError:
        return NotRunning(
            f"the connection to remote {self.remote_name!r} ended before the daemon answered "
            f"(the master connection or the daemon let go); `hpcops remote check "
            f"{self.remote_name}` says which"
        )

    def upload(self, local: Path, remote_dir: str, name: str) -> None:
        raise ProtocolError("a routed client carries no code; the full path ships it")


def open_route(key: RouteKey) -> RoutedClient | None:
    """A client connected over the remembered forward, or None (nothing was sent)."""
    text = read_private_file(key[0], MAX_ROUTE_BYTES)
    if text is None:
        return None
    found = parse_route(text, key)
    if found is None:
        return None
    sock, name = found
    if not private_dir(os.path.dirname(sock), create=False):
        return None
    client = RoutedClient(sock, name)
    try:
        client.connect()
    except HpcopsError:
        forget(key)  # the master is gone or the forward with it: the full path makes it again
        return None
    return client


def remember(key: RouteKey, sock: str, remote_name: str) -> None:
    """Record the route atomically (0600); quietly nothing when it cannot be."""
    path, config, identity, remote = key
    directory = os.path.dirname(path)
    if not private_dir(directory, create=True):
        return
    body = {
        "v": ROUTE_VERSION,
        "config": config,
        "stat": identity,
        "remote": remote,
        "name": remote_name,
        "socket": sock,
    }
    if parse_route(json.dumps(body).encode(), key) is None:
        return  # nothing the next call would take
    tmp = os.path.join(directory, f".route-{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(body, out)
        os.replace(tmp, path)
    except OSError:
        forget_file(tmp)


def forget(key: RouteKey) -> None:
    forget_file(key[0])


def forget_file(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        return
