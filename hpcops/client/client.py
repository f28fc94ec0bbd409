"""The client side of the API: one connection per CLI call, reused for every request it makes."""

from __future__ import annotations

import os
import socket

from hpcops.api import protocol
from hpcops.errors import HpcopsError, NotRunning, PermissionDenied, ProtocolError

# A submit on the login node is this client's hot call: only socket at run time (hpcops/home.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


class Client(protocol.LineClient):
    def __init__(
        self, socket_path: str | os.PathLike[str], *, timeout_s: float | None = 120.0
    ) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._reader: Any = None

    def connect(self) -> None:
        """Connect now (a call connects on its own otherwise): NotRunning or PermissionDenied."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        hint = "start one with `hpcops daemon start` (or check HPCOPS_HOME)"
        try:
            sock.connect(os.fspath(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise NotRunning(f"no hpcops daemon answers on {self.socket_path}; {hint}") from None
        except PermissionError:
            sock.close()
            raise PermissionDenied(
                f"not allowed to connect to {self.socket_path}: the daemon's socket admits only "
                "its own account and the lab's group"
            ) from None
        except OSError as exc:
            sock.close()
            raise NotRunning(f"cannot connect to {self.socket_path}: {exc}; {hint}") from None
        self._sock = sock
        self._reader = sock.makefile("rb")

    def _exchange(self, method: str, line: bytes) -> bytes:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(line)
            # No cap on answers: MAX_LINE_BYTES protects the daemon from clients, and a listing
            # of 10,000 runs is larger than any request.
            answer: bytes = self._reader.readline()
        except TimeoutError:
            raise ProtocolError(
                f"the daemon did not answer {method} within {self.timeout_s or 0:.0f} s"
            ) from None
        except OSError as exc:
            raise NotRunning(f"lost the connection to the daemon: {exc}") from None
        return answer

    def upload(self, local: Path, remote_dir: str, name: str) -> None:
        # On the login node the "upload" is a copy into the daemon's incoming folder.
        import shutil
        from pathlib import Path

        target = Path(remote_dir) / name
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out, local.open("rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)
            target.chmod(0o644)  # whatever the umask: the daemon's account reads it
        except OSError as exc:
            raise PermissionDenied(
                f"cannot put the code bundle into {remote_dir}: {exc.strerror}; the daemon's "
                "code folder admits the lab's group (access.socket_group)"
            ) from None

    def _closed(self) -> HpcopsError:
        return NotRunning("the daemon closed the connection (it may be stopping)")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None
