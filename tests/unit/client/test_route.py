"""The laptop's route to an open forward (client/route.py), offline: what is remembered, when it
is taken (the same config file, unchanged; a private, well-formed route file; a socket that
accepts), that anything else costs only the shortcut, and that a submit over a route reads no
config and imports none of the OpenSSH modules."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcops.api import protocol
from hpcops.api.protocol import LineClient
from hpcops.client import route
from hpcops.client.connect import drop_route, remember_route
from hpcops.errors import InvalidInput, NotRunning, ProtocolError


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A client config, a private cache and a runtime dir, and a daemon on a forward's local end
    (a socket in a 0700 directory) that answers ping and submit, noting every request."""
    config = tmp_path / "config.yaml"
    config.write_text("default_remote: lab\nremotes: {lab: {host: login}}\n")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    sock = runtime / "f-0123456789ab.sock"
    calls: list[dict[str, Any]] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                message = json.loads(line)
                calls.append(message)
                answer = {"ping": "pong", "submit": {"runs": [{"id": 7, "name": "r"}]}}
                reply = protocol.ok(message["id"], answer[message["method"]])
                self.wfile.write(protocol.encode(reply))

    server = socketserver.ThreadingUnixStreamServer(str(sock), Handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    yield {"config": config, "sock": sock, "calls": calls, "env": env, "tmp": tmp_path}
    server.shutdown()
    server.server_close()


def _key(lab: dict[str, Any], remote: str | None = None) -> Any:
    key = route.route_key(remote, str(lab["config"]), lab["env"])
    assert key is not None
    return key


def test_a_remembered_route_is_taken_and_talks_to_the_daemon(lab: dict[str, Any]) -> None:
    key = _key(lab)
    assert route.open_route(key) is None, "nothing remembered yet"
    route.remember(key, str(lab["sock"]), "lab")
    path = Path(key[0])
    assert path.name == "route.json" and path.parent.name == "hpcops"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["route.json"], "no temporary file left"
    client = route.open_route(key)
    assert client is not None
    try:
        assert client.call("ping") == "pong"
    finally:
        client.close()
    assert [c["method"] for c in lab["calls"]] == ["ping"]


def test_a_route_is_kept_per_remote_name(lab: dict[str, Any]) -> None:
    route.remember(_key(lab, "gpu"), str(lab["sock"]), "gpu")
    assert route.open_route(_key(lab)) is None, "the default remote's route is another file"
    client = route.open_route(_key(lab, "gpu"))
    assert client is not None
    client.close()
    assert Path(_key(lab, "gpu")[0]).name == "route-gpu.json"


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 65, "a b", "é"])
def test_no_route_for_a_name_that_is_no_file_name(lab: dict[str, Any], name: str) -> None:
    assert route.route_key(name, str(lab["config"]), lab["env"]) is None


def test_no_route_without_a_config(lab: dict[str, Any]) -> None:
    assert route.route_key(None, str(lab["tmp"] / "none.yaml"), lab["env"]) is None
    assert route.route_key("lab", str(lab["tmp"]), lab["env"]) is None, "a folder is no config"


@pytest.mark.parametrize("edit", ["rewrite", "touch", "replace"])
def test_an_edited_config_is_read_again(lab: dict[str, Any], edit: str) -> None:
    route.remember(_key(lab), str(lab["sock"]), "lab")
    config: Path = lab["config"]
    if edit == "rewrite":
        config.write_text(config.read_text() + "# a comment\n")
    elif edit == "touch":
        st = config.stat()
        os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    else:  # an editor's save: a new file in its place, same size
        new = config.with_suffix(".new")
        new.write_text(config.read_text())
        new.replace(config)
    assert route.open_route(_key(lab)) is None
    assert lab["calls"] == []


def test_a_socket_nobody_listens_on_drops_the_route(lab: dict[str, Any]) -> None:
    dead = lab["sock"].parent / "f-dead.sock"
    socket.socket(socket.AF_UNIX).bind(str(dead))  # bound, then closed: refuses connections
    key = _key(lab)
    route.remember(key, str(dead), "lab")
    assert Path(key[0]).exists()
    assert route.open_route(key) is None
    assert not Path(key[0]).exists(), "dropped: the full path makes the forward again"


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"socket": "relative.sock"},
        {"socket": "/x\u0000y"},
        {"socket": "/" + "s" * 120},
        {"socket": 7},
        {"name": "a/b"},
        {"name": None},
        {"remote": "other"},
        {"config": "/elsewhere/config.yaml"},
        {"stat": [0, 0, 0, 0]},
    ],
)
def test_a_route_file_of_another_shape_is_not_taken(
    lab: dict[str, Any], change: dict[str, Any]
) -> None:
    key = _key(lab)
    body = {
        "v": 1,
        "config": key[1],
        "stat": key[2],
        "remote": None,
        "name": "lab",
        "socket": str(lab["sock"]),
    }
    assert route.parse_route(json.dumps(body).encode(), key) == (str(lab["sock"]), "lab")
    assert route.parse_route(json.dumps(body | change).encode(), key) is None


def test_a_route_file_that_is_no_json_or_too_big_is_not_taken(lab: dict[str, Any]) -> None:
    key = _key(lab)
    route.remember(key, str(lab["sock"]), "lab")
    path = Path(key[0])
    for text in ("{not json", "[" * 100_000, json.dumps({"pad": "x" * 5000})):
        path.write_text(text)
        assert route.open_route(key) is None


def test_a_planted_route_file_is_not_followed(lab: dict[str, Any]) -> None:
    key = _key(lab)
    route.remember(key, str(lab["sock"]), "lab")
    path = Path(key[0])
    real = lab["tmp"] / "elsewhere.json"
    real.write_text(path.read_text())
    path.unlink()
    path.symlink_to(real)
    assert route.open_route(key) is None, "a symlink in place of the file"
    path.unlink()
    os.mkfifo(path)
    assert route.open_route(key) is None, "a FIFO does not hang the call"


def test_a_route_in_a_folder_others_may_enter_is_not_taken(lab: dict[str, Any]) -> None:
    key = _key(lab)
    route.remember(key, str(lab["sock"]), "lab")
    Path(key[0]).parent.chmod(0o755)
    assert route.open_route(key) is None
    Path(key[0]).parent.chmod(0o700)
    lab["sock"].parent.chmod(0o755)
    assert route.open_route(key) is None, "nor a socket in such a folder"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the file away")
def test_a_route_file_of_another_user_is_not_taken(lab: dict[str, Any]) -> None:
    key = _key(lab)
    route.remember(key, str(lab["sock"]), "lab")
    os.chown(key[0], 4242, -1)
    assert route.open_route(key) is None


class _Forwarded(LineClient):
    def route(self) -> tuple[str, str] | None:
        return ("/run/user/1000/hpcops/f-abc.sock", "lab")


def test_remember_route_keeps_only_a_forwards_way(lab: dict[str, Any]) -> None:
    key = _key(lab)
    remember_route(key, LineClient())
    assert not Path(key[0]).exists(), "a client that is no forward leaves nothing"
    remember_route(None, _Forwarded())
    assert not Path(key[0]).exists(), "nor a call that came by a route (no key)"
    remember_route(key, _Forwarded())
    assert route.parse_route(Path(key[0]).read_bytes(), key) == (
        "/run/user/1000/hpcops/f-abc.sock",
        "lab",
    )


def test_a_routed_client_that_loses_the_far_end_names_the_remote(lab: dict[str, Any]) -> None:
    client = route.RoutedClient(str(lab["sock"]), "lab")
    error = client._closed()
    assert isinstance(error, NotRunning) and "remote 'lab'" in str(error)
    assert "hpcops remote check lab" in str(error)


def test_a_routed_client_waits_for_its_answer_as_long_as_it_takes(lab: dict[str, Any]) -> None:
    # As on the forward's own socket: a submit given up on might still be queued.
    client = route.RoutedClient(str(lab["sock"]), "lab")
    try:
        client.connect()
        assert client._sock is not None and client._sock.gettimeout() is None
    finally:
        client.close()


def test_only_a_route_that_did_not_answer_is_dropped(lab: dict[str, Any]) -> None:
    key = _key(lab)
    routed = route.RoutedClient(str(lab["sock"]), "lab")
    route.remember(key, str(lab["sock"]), "lab")
    drop_route(key, routed, InvalidInput("s.yaml: invalid spec"))
    drop_route(key, LineClient(), NotRunning("the full path's own client"))
    drop_route(None, routed, NotRunning("a call that came without a key"))
    assert Path(key[0]).exists(), "the daemon answered, or the route was not taken"
    drop_route(key, routed, ProtocolError("garbage from the far end"))
    assert not Path(key[0]).exists()
    route.remember(key, str(lab["sock"]), "lab")
    drop_route(key, routed, NotRunning("the far end let go"))
    assert not Path(key[0]).exists()


PROBE = """
import sys
sys.argv = ["hpcops", *{argv!r}]
from hpcops.cli.fast import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
names = ("yaml", "hpcops.client.config", "hpcops.client.openssh", "subprocess", "pathlib")
print({{"imported": [n for n in names if n in sys.modules], "code": code}})
"""


def _submit_by_the_route(lab: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`hpcops --remote lab submit s.yaml` through the fast entry, in a fresh interpreter."""
    spec = lab["tmp"] / "s.yaml"
    spec.write_text("name: r\nexperiment: e\ncommand: 'true'\n")
    env = {**os.environ, **lab["env"], "HPCOPS_CONFIG": str(lab["config"])}
    env.pop("HPCOPS_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=["--remote", "lab", "submit", str(spec)])],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return proc, spec


def test_a_submit_over_a_route_reads_no_config(lab: dict[str, Any]) -> None:
    """The fast entry's submit, by the route the last forwarded submit left: the daemon gets
    it, and the process imported neither the config reader nor any OpenSSH module."""
    key = _key(lab, "lab")
    route.remember(key, str(lab["sock"]), "lab")
    proc, spec = _submit_by_the_route(lab)
    *out, shape = proc.stdout.splitlines()
    assert out == ["7"], proc.stderr
    assert ast.literal_eval(shape) == {"imported": [], "code": 0}
    [call] = lab["calls"]
    assert call["method"] == "submit" and call["params"]["specs"][0]["source"] == str(spec)


def test_a_route_whose_far_end_lets_go_is_forgotten_by_the_submit(lab: dict[str, Any]) -> None:
    """The master lives on but nothing answers at the forward's far end (the daemon moved): the
    forward's local end accepts and closes. The submit fails as not running, once, and forgets
    the route, so that the next submit goes the full way and finds the daemon again."""
    runtime = lab["tmp"] / "run2"
    runtime.mkdir(mode=0o700)
    dead = runtime / "f-dead.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(dead))
    listener.listen(4)

    def accept_and_close() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.recv(65536)
                conn.close()

    threading.Thread(target=accept_and_close, daemon=True).start()
    key = _key(lab, "lab")
    route.remember(key, str(dead), "lab")
    try:
        proc, _ = _submit_by_the_route(lab)
    finally:
        listener.close()
    *out, shape = proc.stdout.splitlines()
    assert out == [] and ast.literal_eval(shape)["code"] == 3
    assert "remote 'lab'" in proc.stderr
    assert not Path(key[0]).exists(), "the route is forgotten"
