"""The wire format between the CLI (or `hpcops api` over SSH) and the daemon.

Newline-delimited JSON on a Unix socket; one connection may carry many requests.

    request:  {"v": 1, "id": 7, "method": "show", "params": {"run": 42}}
    response: {"v": 1, "id": 7, "ok": true, "result": {...}}
              {"v": 1, "id": 7, "ok": false, "error": {"kind": "not_found", "message": "..."}}

A request with another "v" is answered with a protocol error that names both versions.
"""

from __future__ import annotations

import json
from typing import Any

from hpcops.errors import ERROR_KINDS, HpcopsError, ProtocolError

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 4 * 1024 * 1024  # a spec is at most 1 MiB; JSON escaping can double it


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
