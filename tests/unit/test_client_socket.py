"""The laptop side's plain ends: the socket client and `hpcops api`'s relay, against a fake
daemon (a thread answering on a Unix socket) or none at all."""

from __future__ import annotations

import io
import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcops.api import protocol
from hpcops.client.client import Client
from hpcops.client.relay import relay
from hpcops.errors import NotFound, NotRunning


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Not tmp_path: a Unix socket's path must fit in 107 bytes.
    with tempfile.TemporaryDirectory(prefix="hpcops-sock-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def fake_daemon(socket_dir: Path) -> Iterator[Path]:
    """A socket that answers `show` for run 1 and not_found for anything else."""
    path = socket_dir / "hpcops.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                message = protocol.decode(line)
                if message["params"].get("run") == 1:
                    answer = protocol.ok(message["id"], {"id": 1, "state": "QUEUED"})
                else:
                    answer = protocol.failure(message["id"], NotFound("no run 2"))
                conn.sendall(protocol.encode(answer))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    server.close()
    thread.join(timeout=5)


def test_the_client_names_a_missing_daemon_and_the_fix(socket_dir: Path) -> None:
    with pytest.raises(NotRunning, match="hpcops daemon start"), Client(socket_dir / "x.sock") as c:
        c.call("ping")


def test_one_connection_carries_every_request_of_a_call(fake_daemon: Path) -> None:
    with Client(fake_daemon) as client:
        assert client.call("show", run=1) == {"id": 1, "state": "QUEUED"}
        with pytest.raises(NotFound, match="no run 2"):
            client.call("show", run=2)
        assert client.call("show", run=1)["state"] == "QUEUED"


def test_the_relay_forwards_each_line_and_its_answer(fake_daemon: Path) -> None:
    requests = [protocol.request(7, "show", {"run": 1}), protocol.request(8, "show", {"run": 2})]
    stdout = io.BytesIO()
    relay(fake_daemon, io.BytesIO(b"".join(map(protocol.encode, requests))), stdout)
    answers = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [a["id"] for a in answers] == [7, 8]
    assert answers[0]["result"]["state"] == "QUEUED"
    assert answers[1]["error"]["kind"] == NotFound.kind


def test_the_relay_answers_every_request_when_no_daemon_runs(socket_dir: Path) -> None:
    stdin = io.BytesIO(b'{"v": 1, "id": 3, "method": "ping"}\nnot json\n')
    stdout = io.BytesIO()
    relay(socket_dir / "none.sock", stdin, stdout)
    answers = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [a["id"] for a in answers] == [3, None]
    assert {a["error"]["kind"] for a in answers} == {NotRunning.kind}
    assert "someone there must `hpcops daemon start`" in answers[0]["error"]["message"]
