"""The fast path over an open OpenSSH master: a Unix socket on the laptop that the master
forwards to the daemon's socket on the login node (issue 16, latency).

Without it every CLI call opens a session on the master and starts a Python process
(`hpcops api`) on the login node to relay its JSON lines: about 0.25 s. With it a call connects
to a local socket and speaks the protocol directly, as the local Client does. The master adds the
forward when asked (`ssh -O forward -L LOCAL:REMOTE host`) and keeps it for its lifetime. The
daemon sees the connection come from sshd running as the user, so its SO_PEERCRED check is the
same as for `hpcops api`.

    remote socket   the daemon's own socket path: `remotes.NAME.socket` in the client config, or
                    learnt from the daemon's `ping` over `hpcops api` and cached per target in
                    $XDG_CACHE_HOME/hpcops (or ~/.cache/hpcops), a 0700 directory, one 0600 JSON
                    file per target, written atomically. A file that is unreadable, too big,
                    not ours, a symlink or of the wrong shape is "unknown": no forward this call.
    local socket    $XDG_RUNTIME_DIR/hpcops/f-HASH.sock (else in the cache directory), HASH of
                    the master's ControlPath (else the target) and the remote socket; never
                    longer than a Unix socket path may be (107 bytes), in a directory only we
                    can enter. The master binds it with StreamLocalBindMask 0177 (mode 0600).

The I/O (`connect_forwarded`) never sends a request twice: it connects, adds the forward when
the file is missing or stale, and verifies a forward it just added with one `ping`. Anything
failing on the way means "no forward": the caller goes the `hpcops api` path before it has
written a request. Pure parts (`target_key`, `local_socket_path`, `parse_cache`, `after_connect`,
`forward_failure`) are unit-tested.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcops.api import protocol
from hpcops.client.config import Remote, valid_socket_path
from hpcops.client.route import SUN_PATH_MAX, cache_dir_text, private_dir, read_private_file
from hpcops.errors import ProtocolError

# subprocess and tempfile are imported where they are used: a call over a forward that is up
# runs no ssh and writes no cache, and skips their import (about 15 ms of CPU, issue 16).

CACHE_VERSION = 1
MAX_CACHE_BYTES = 4096
# Connecting to a socket file nobody listens on: no forward yet, or a dead master's leftover.
ABSENT = frozenset({errno.ENOENT, errno.ECONNREFUSED})


def target_key(remote: Remote) -> dict[str, Any]:
    """What identifies the daemon a remote reaches: its SSH target, command and home."""
    return {
        "host": remote.host,
        "port": remote.port,
        "user": remote.user,
        "command": list(remote.command),
        "home": remote.home,
    }


def _digest(*parts: str, size: int = 16) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:size]


def key_digest(remote: Remote) -> str:
    return _digest(json.dumps(target_key(remote), sort_keys=True))


def cache_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    return Path(cache_dir_text(env))


def cache_file(remote: Remote, env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    return cache_dir(env) / f"remote-{key_digest(remote)}.json"


def local_socket_path(directory: Path, anchor: str, remote_socket: str) -> Path | None:
    """The forward's local end, or None when it would be too long for a Unix socket."""
    path = directory / f"f-{_digest(anchor, remote_socket, size=12)}.sock"
    return path if len(os.fsencode(path)) <= SUN_PATH_MAX else None


def parse_cache(text: bytes, remote: Remote) -> str | None:
    """The remote socket a cache file records for `remote`, or None for anything else."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("v") != CACHE_VERSION:
        return None
    if data.get("key") != target_key(remote):
        return None  # a hash collision or a hand-edited file: not this target's
    sock = data.get("socket")
    return sock if valid_socket_path(sock) else None


def read_cached_socket(path: Path, remote: Remote) -> str | None:
    text = read_private_file(os.fspath(path), MAX_CACHE_BYTES)
    return parse_cache(text, remote) if text is not None else None


def write_cached_socket(path: Path, remote: Remote, remote_socket: str) -> bool:
    """Record the remote socket atomically (0600); False when it could not be."""
    if not valid_socket_path(remote_socket) or not private_dir(path.parent, create=True):
        return False
    import tempfile

    body = {"v": CACHE_VERSION, "key": target_key(remote), "socket": remote_socket}
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".remote-", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(body, out)
        Path(tmp).replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        return False
    return True


def drop_cached_socket(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def no_master_possible(options: dict[str, str]) -> bool:
    """`ssh -G` shows no ControlPath: there is no master to ask, so no forward to try."""
    return options.get("controlpath", "none").lower() in ("", "none")


def after_connect(error: int | None) -> str:
    """What to do after connecting to the local socket: "use" it, "forward" (nothing listens:
    ask the master, after removing a stale file), or "exec" (anything else: the plain path)."""
    if error is None:
        return "use"
    return "forward" if error in ABSENT else "exec"


def forward_failure(returncode: int, stderr: str) -> str | None:
    """Why `ssh -O forward` did not add the forward (None: it did). With no master open, ssh
    exits 255 saying "Control socket connect(PATH): No such file or directory"; with no
    ControlPath, "No ControlPath specified for "-O" command"."""
    if returncode == 0:
        return None
    text = stderr.strip()
    if "No ControlPath specified" in text:
        return "no ControlPath for this host in ~/.ssh/config"
    if "Control socket connect" in text:
        return "no master connection is open"
    return text[-300:] or f"ssh -O forward exited {returncode}"


@dataclass(frozen=True)
class Forward:
    """One remote's forward: its two ends and the cache entry the remote end came from (None:
    the client config names it)."""

    local: Path
    remote: str
    cache: Path | None


def plan(
    remote: Remote,
    options: dict[str, str] | None,
    env: dict[str, str] | os._Environ[str] = os.environ,
) -> Forward | None:
    """The forward to use for `remote`, when its remote socket is known and a private place
    for the local end exists; None otherwise (the plain path)."""
    cache: Path | None = None
    if remote.socket is not None:
        remote_socket: str | None = remote.socket
    else:
        cache = cache_file(remote, env)
        remote_socket = read_cached_socket(cache, remote)
    if remote_socket is None:
        return None
    control = (options or {}).get("controlpath", "none")
    anchor = control if control.lower() != "none" else key_digest(remote)
    runtime = env.get("XDG_RUNTIME_DIR", "")
    candidates = [Path(runtime) / "hpcops"] if runtime.startswith("/") else []
    for directory in [*candidates, cache_dir(env)]:
        local = local_socket_path(directory, anchor, remote_socket)
        if local is not None and private_dir(directory, create=True):
            return Forward(local, remote_socket, cache)
    return None


def forward_argv(remote: Remote, ssh_argv: list[str], fwd: Forward, op: str) -> list[str]:
    """`ssh -O forward|cancel -L LOCAL:REMOTE host`: asks the running master, never a new login.
    No ClearAllForwardings here: it would clear our -L too."""
    return [
        *ssh_argv,
        "-o",
        "BatchMode=yes",
        "-O",
        op,
        "-L",
        f"{fwd.local}:{fwd.remote}",
        "--",
        remote.host,
    ]


def _control(argv: list[str]) -> str | None:
    """Run one `ssh -O` command; why it failed, or None."""
    import subprocess

    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run ssh -O: {exc}"
    return forward_failure(proc.returncode, proc.stderr)


def _connect(path: Path) -> tuple[socket.socket | None, int | None]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(path))
    except OSError as exc:
        sock.close()
        return None, exc.errno or errno.EIO
    return sock, None


def _remove_stale(path: Path) -> bool:
    """Unlink a socket file nobody listens on, only if it is a socket of ours (lstat: a symlink
    is left alone, and then the forward is not used)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


def verify(sock: socket.socket, timeout_s: float) -> bool:
    """One `ping` over a forward just added: the master accepts the local connection even when
    the remote end cannot connect (a wrong socket path), and then closes it: EOF."""
    sock.settimeout(timeout_s)
    try:
        sock.sendall(protocol.encode(protocol.request(0, "ping", {})))
        with sock.makefile("rb") as reader:
            line = reader.readline(protocol.MAX_LINE_BYTES)
        answer = protocol.decode(line) if line else {}
    except (OSError, ProtocolError):
        return False
    finally:
        sock.settimeout(None)
    return answer.get("ok") is True and answer.get("id") == 0


@dataclass
class Attempt:
    """How a call tried the forward, for `hpcops remote check`."""

    forward: Forward | None
    sock: socket.socket | None = None
    added: bool = False
    detail: str = ""
    learn: bool = False  # ask the daemon where its socket is, over `hpcops api`


def connect_forwarded(
    remote: Remote, ssh_argv: list[str], fwd: Forward | None, timeout_s: float
) -> Attempt:
    """A connected socket to the daemon over the master's forward, or an Attempt without one
    (detail says why): nothing has been sent on it but a verifying ping."""
    attempt = Attempt(fwd)
    if fwd is None:
        attempt.detail = "the daemon's socket path is not known yet"
        attempt.learn = remote.socket is None
        return attempt
    sock, error = _connect(fwd.local)
    step = after_connect(error)
    if step == "forward":
        if not _remove_stale(fwd.local):
            attempt.detail = f"{fwd.local} is not a socket of ours"
            return attempt
        refused = _control(forward_argv(remote, ssh_argv, fwd, "forward"))
        # ssh sends the config's LocalForward lines too; one of them failing makes it exit
        # non-zero after ours was added, so the connect decides, not the exit status.
        sock, error = _connect(fwd.local)
        if sock is None and refused is None:
            # The master answers "ok" to a forward it already has, without binding again: its
            # file was removed (a concurrent call took it for stale). Cancel, then add it anew.
            cancel(remote, ssh_argv, fwd)
            refused = _control(forward_argv(remote, ssh_argv, fwd, "forward"))
            sock, error = _connect(fwd.local)
        if sock is None:
            attempt.detail = refused or f"the forward did not appear: {os.strerror(error or 0)}"
            return attempt
        attempt.added = True
        if not verify(sock, timeout_s):
            sock.close()
            cancel(remote, ssh_argv, fwd)
            attempt.detail = f"nothing answered at {fwd.remote} on the remote"
            if fwd.cache is not None:
                drop_cached_socket(fwd.cache)
                attempt.learn = True
                attempt.detail += "; forgot that path, the daemon will be asked again"
            else:
                attempt.detail += "; check `socket:` of this remote in the client config"
            return attempt
    elif step == "exec":
        attempt.detail = f"cannot connect to {fwd.local}: {os.strerror(error or 0)}"
        return attempt
    assert sock is not None
    sock.settimeout(None)  # as the `hpcops api` path: a long call waits as long as it takes
    attempt.sock = sock
    attempt.detail = "added the forward" if attempt.added else "forward open"
    return attempt


def cancel(remote: Remote, ssh_argv: list[str], fwd: Forward) -> None:
    _control(forward_argv(remote, ssh_argv, fwd, "cancel"))
    _remove_stale(fwd.local)
