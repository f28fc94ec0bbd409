"""The client side of the API: one connection per CLI call, reused for every request it makes."""

from __future__ import annotations

import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from hpcops.api import protocol
from hpcops.errors import NotRunning, PermissionDenied, ProtocolError


class Client:
    def __init__(self, socket_path: Path, *, timeout_s: float = 120.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._next_id = 1

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        hint = "start one with `hpcops daemon start` (or check HPCOPS_HOME)"
        try:
            sock.connect(str(self.socket_path))
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

    def call(self, method: str, **params: Any) -> Any:
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        request_id = self._next_id
        self._next_id += 1
        try:
            self._sock.sendall(protocol.encode(protocol.request(request_id, method, params)))
            # No cap on answers: MAX_LINE_BYTES protects the daemon from clients, and a listing
            # of 10,000 runs is larger than any request.
            line = self._reader.readline()
        except TimeoutError:
            raise ProtocolError(
                f"the daemon did not answer {method} within {self.timeout_s:.0f} s"
            ) from None
        except OSError as exc:
            raise NotRunning(f"lost the connection to the daemon: {exc}") from None
        if not line:
            raise NotRunning("the daemon closed the connection (it may be stopping)")
        response = protocol.decode(line)
        protocol.check_version(response, "daemon")
        if not response.get("ok"):
            protocol.raise_error(response.get("error"))
        return response.get("result")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None
