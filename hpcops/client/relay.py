"""`hpcops api`: the login node's end of a laptop's SSH channel. Each JSON request line on stdin
goes to the daemon's Unix socket, as the SSH user (so the daemon's SO_PEERCRED check sees who
really called), and each answer comes back on stdout. When the daemon cannot be reached, each
request is answered with an error saying so, so the laptop prints a clear message."""

from __future__ import annotations

import contextlib
import json
import os
import socket

from hpcops.api import protocol
from hpcops.errors import HpcopsError, NotRunning, PermissionDenied

# Every laptop call that does not go through a forward starts this on the login node: only
# json and socket at run time (see hpcops/home.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO


def _request_id(line: bytes) -> object:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        message = json.loads(line)
        if isinstance(message, dict):
            return message.get("id")
    return None


def relay(socket_path: str | os.PathLike[str], stdin: BinaryIO, stdout: BinaryIO) -> None:
    host = socket.gethostname()
    conn: socket.socket | None = None
    reader: BinaryIO | None = None
    while True:
        line = stdin.readline(protocol.MAX_LINE_BYTES + 1)
        if not line:
            break
        try:
            if conn is None:
                conn = _connect(socket_path, host)
                reader = conn.makefile("rb")
            assert reader is not None
            conn.sendall(line if line.endswith(b"\n") else line + b"\n")
            answer = reader.readline()
            if not answer:
                conn.close()
                conn = reader = None
                raise NotRunning(f"the hpcops daemon on {host} closed the connection")
        except HpcopsError as exc:
            answer = protocol.encode(protocol.failure(_request_id(line), exc))
        except OSError as exc:
            conn = reader = None
            error = NotRunning(f"lost the hpcops daemon on {host}: {exc}")
            answer = protocol.encode(protocol.failure(_request_id(line), error))
        stdout.write(answer)
        stdout.flush()
    if conn is not None:
        conn.close()


def _connect(socket_path: str | os.PathLike[str], host: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(os.fspath(socket_path))
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        raise NotRunning(
            f"no hpcops daemon runs on {host} (no answer on {socket_path}); "
            "someone there must `hpcops daemon start`"
        ) from None
    except PermissionError:
        conn.close()
        raise PermissionDenied(
            f"not allowed to connect to the hpcops daemon on {host} ({socket_path}): your "
            "account there is not in the lab's group"
        ) from None
    return conn
