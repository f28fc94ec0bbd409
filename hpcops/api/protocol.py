"""The wire format between the CLI (or `hpcops api` over SSH) and the daemon.

Newline-delimited JSON on a Unix socket; one connection may carry many requests.

    request:  {"v": 1, "id": 7, "method": "show", "params": {"run": 42}}
    response: {"v": 1, "id": 7, "ok": true, "result": {...}}
              {"v": 1, "id": 7, "ok": false, "error": {"kind": "not_found", "message": "..."}}

A request with another "v" is answered with a protocol error that names both versions.
"""

from __future__ import annotations

import json

from hpcops.errors import ERROR_KINDS, HpcopsError, ProtocolError

# Every CLI call imports this module: only json at run time (see hpcops/home.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType
    from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 4 * 1024 * 1024  # a spec is at most 1 MiB; JSON escaping can double it


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    # ValueError also covers an integer over Python's digit limit, and RecursionError a deeply
    # nested array: either must cost the sender its request, not the connection's thread.
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not a JSON message: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def request(request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "method": method, "params": params}


def ok(request_id: Any, result: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}


def failure(request_id: Any, error: HpcopsError) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"kind": error.kind, "message": error.message},
    }


def check_version(message: dict[str, Any], side: str) -> None:
    version = message.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version mismatch: the {side} speaks v{version}, this hpcops speaks "
            f"v{PROTOCOL_VERSION}; install the same hpcops version on both ends"
        )


def raise_error(error: Any) -> None:
    """Raise the error a response carries, as the class the daemon raised."""
    if not isinstance(error, dict):
        raise ProtocolError(f"malformed error in response: {error!r}")
    cls = ERROR_KINDS.get(str(error.get("kind")), HpcopsError)
    raise cls(str(error.get("message", "unknown error")))


class LineClient:
    """What the socket client and the SSH client share: numbered requests, one JSON line each
    way. A subclass says how one line travels (`_exchange`) and how to let go (`close`)."""

    def __init__(self) -> None:
        self._next_id = 1

    def _exchange(self, method: str, line: bytes) -> bytes:
        """Send one request line; return the answer line, or b"" if the other end closed."""
        raise NotImplementedError

    def _closed(self) -> HpcopsError:
        """The error to raise when the other end closed instead of answering."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def upload(self, local: Path, remote_dir: str, name: str) -> None:
        """Put a file where the daemon can read it (a code bundle), mode 0644."""
        raise NotImplementedError

    def route(self) -> tuple[str, str] | None:
        """The local socket this client's calls reached the daemon through, and the remote's
        name, when a later call may connect to that socket itself (client/route.py): the
        local end of an SSH master's forward. None for every other way."""
        return None

    def call(self, method: str, **params: Any) -> Any:
        request_id = self._next_id
        self._next_id += 1
        line = self._exchange(method, encode(request(request_id, method, params)))
        if not line:
            raise self._closed()
        response = decode(line)
        check_version(response, "daemon")
        if not response.get("ok"):
            raise_error(response.get("error"))
        return response.get("result")

    def __enter__(self) -> LineClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
