from __future__ import annotations

import pytest

from hpcops.api import protocol
from hpcops.errors import NotFound, ProtocolError


def test_round_trip() -> None:
    line = protocol.encode(protocol.request(3, "show", {"run": 1}))
    assert line.endswith(b"\n")
    assert protocol.decode(line) == {"v": 1, "id": 3, "method": "show", "params": {"run": 1}}


def test_version_mismatch_names_both_versions() -> None:
    with pytest.raises(ProtocolError, match="daemon speaks v2, this hpcops speaks v1"):
        protocol.check_version({"v": 2}, "daemon")


def test_errors_cross_the_wire_as_their_class() -> None:
    response = protocol.failure(1, NotFound("no run 9"))
    with pytest.raises(NotFound, match="no run 9"):
        protocol.raise_error(response["error"])


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b"\xff\xfe",
        # over Python's digit limit for int(): a ValueError that is not a JSONDecodeError
        b'{"v": 1, "params": {"run": ' + b"9" * 5000 + b"}}",
        b"[" * 100_000,  # nested past the recursion limit
    ],
)
def test_garbage_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(line)
