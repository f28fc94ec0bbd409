"""The forward over an OpenSSH master (client/forward.py), offline: the cache of the daemon's
socket path (a file the user owns but that may be corrupt or planted), the local socket's path,
and the decisions; `ssh -O forward`'s stderr as Debian's OpenSSH_9.2p1 prints it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcops.client import forward
from hpcops.client.config import Remote, parse_client_config
from hpcops.client.openssh import OpenSshClient
from hpcops.errors import ConfigError, RemoteUnreachable

REMOTE = Remote(host="lab-otp", command=["/opt/lab/bin/hpcops"], home="/scratch/lab/.hpcops")
SOCK = "/scratch/lab/.hpcops/hpcops.sock"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "cache")}


def _cache(env: dict[str, str]) -> Path:
    return forward.cache_file(REMOTE, env)


def test_the_cache_round_trips_private_and_atomic(env: dict[str, str]) -> None:
    path = _cache(env)
    assert forward.read_cached_socket(path, REMOTE) is None, "nothing cached yet"
    assert forward.write_cached_socket(path, REMOTE, SOCK)
    assert forward.read_cached_socket(path, REMOTE) == SOCK
    assert path.parent == Path(env["XDG_CACHE_HOME"]) / "hpcops"
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left"
    forward.drop_cached_socket(path)
    assert forward.read_cached_socket(path, REMOTE) is None


def test_the_cache_is_keyed_by_the_whole_target(env: dict[str, str]) -> None:
    forward.write_cached_socket(_cache(env), REMOTE, SOCK)
    for other in (
        Remote(host="lab-otp", command=["/opt/lab/bin/hpcops"], home="/other"),
        Remote(host="lab-otp", command=["hpcops"], home="/scratch/lab/.hpcops"),
        Remote(host="lab-otp", port=2222, command=["/opt/lab/bin/hpcops"], home=REMOTE.home),
        Remote(host="lab-otp", user="bo", command=["/opt/lab/bin/hpcops"], home=REMOTE.home),
        Remote(host="login2", command=["/opt/lab/bin/hpcops"], home=REMOTE.home),
    ):
        path = forward.cache_file(other, env)
        assert path != _cache(env)
        assert forward.read_cached_socket(path, other) is None
    # A file of another target under this target's name (a hand copy): its key says so.
    assert forward.parse_cache(_cache(env).read_bytes(), REMOTE) == SOCK
    assert forward.parse_cache(_cache(env).read_bytes(), Remote(host="x")) is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'"a string"',
        b"[" * 100_000,
        json.dumps({"v": 2, "key": forward.target_key(REMOTE), "socket": SOCK}).encode(),
        json.dumps({"key": forward.target_key(REMOTE), "socket": SOCK}).encode(),
        json.dumps({"v": 1, "key": forward.target_key(REMOTE), "socket": 7}).encode(),
        json.dumps({"v": 1, "key": forward.target_key(REMOTE), "socket": None}).encode(),
        json.dumps({"v": 1, "key": forward.target_key(REMOTE), "socket": "relative.sock"}).encode(),
        json.dumps({"v": 1, "key": forward.target_key(REMOTE), "socket": "/a:/b"}).encode(),
        json.dumps({"v": 1, "key": forward.target_key(REMOTE), "socket": "/a/../b"}).encode(),
        json.dumps({"v": 1, "key": forward.target_key(REMOTE), "socket": "/" + "a" * 107}).encode(),
        json.dumps({"v": 1, "key": "lab-otp", "socket": SOCK}).encode(),
        b"\xff\xfe garbage",
    ],
)
def test_a_corrupt_cache_means_no_forward(env: dict[str, str], body: bytes) -> None:
    path = _cache(env)
    forward.write_cached_socket(path, REMOTE, SOCK)
    path.write_bytes(body)
    assert forward.read_cached_socket(path, REMOTE) is None
    assert forward.plan(REMOTE, None, env) is None


def test_a_huge_cache_file_is_not_read_whole(env: dict[str, str]) -> None:
    path = _cache(env)
    forward.write_cached_socket(path, REMOTE, SOCK)
    good = path.read_bytes()
    path.write_bytes(good + b" " * forward.MAX_CACHE_BYTES)
    assert forward.read_cached_socket(path, REMOTE) is None


def test_a_symlink_planted_for_the_file_is_ignored(env: dict[str, str], tmp_path: Path) -> None:
    path = _cache(env)
    forward.write_cached_socket(path, REMOTE, SOCK)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(elsewhere)
    assert forward.read_cached_socket(path, REMOTE) is None


def test_a_symlink_planted_for_the_directory_is_ignored(
    env: dict[str, str], tmp_path: Path
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    path = _cache(env)
    path.parent.parent.mkdir(parents=True)
    path.parent.symlink_to(real)
    assert not forward.write_cached_socket(path, REMOTE, SOCK)
    (real / path.name).write_text(
        json.dumps({"v": 1, "key": forward.target_key(REMOTE), "socket": SOCK})
    )
    assert forward.read_cached_socket(path, REMOTE) is None
    assert forward.plan(REMOTE, None, env) is None


def test_a_directory_others_may_enter_is_refused(env: dict[str, str]) -> None:
    path = _cache(env)
    forward.write_cached_socket(path, REMOTE, SOCK)
    path.parent.chmod(0o750)
    assert forward.read_cached_socket(path, REMOTE) is None
    assert not forward.write_cached_socket(path, REMOTE, SOCK)
    assert not forward.private_dir(path.parent, create=True)


def test_a_directory_file_or_fifo_in_place_of_the_cache_file_is_ignored(
    env: dict[str, str],
) -> None:
    path = _cache(env)
    forward.private_dir(path.parent, create=True)
    path.mkdir()
    assert forward.read_cached_socket(path, REMOTE) is None
    path.rmdir()
    os.mkfifo(path)  # O_NONBLOCK: opening it does not hang; it is not a regular file
    assert forward.read_cached_socket(path, REMOTE) is None


def test_the_local_socket_is_short_and_named_by_both_ends(tmp_path: Path) -> None:
    one = forward.local_socket_path(tmp_path, "/home/ana/.ssh/cm-abc", SOCK)
    assert one is not None and one.parent == tmp_path
    assert one.name.startswith("f-") and one.name.endswith(".sock") and len(one.name) == 19
    assert one == forward.local_socket_path(tmp_path, "/home/ana/.ssh/cm-abc", SOCK)
    assert one != forward.local_socket_path(tmp_path, "/home/ana/.ssh/cm-def", SOCK)
    assert one != forward.local_socket_path(tmp_path, "/home/ana/.ssh/cm-abc", "/other.sock")
    deep = Path("/" + "d" * 90)
    assert forward.local_socket_path(deep, "x", SOCK) is None, "over 107 bytes"
    fits = Path("/" + "d" * (forward.SUN_PATH_MAX - 21))
    path = forward.local_socket_path(fits, "x", SOCK)
    assert path is not None and len(os.fsencode(path)) == forward.SUN_PATH_MAX


def test_plan_prefers_the_runtime_dir_and_falls_back_to_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {"XDG_CACHE_HOME": str(cache), "XDG_RUNTIME_DIR": str(runtime)}
    assert forward.plan(REMOTE, None, env) is None, "no socket known: the plain path"
    forward.write_cached_socket(forward.cache_file(REMOTE, env), REMOTE, SOCK)
    fwd = forward.plan(REMOTE, {"controlpath": "/home/ana/.ssh/cm-1"}, env)
    assert fwd is not None and fwd.local.parent == runtime / "hpcops" and fwd.remote == SOCK
    assert fwd.cache == forward.cache_file(REMOTE, env)
    # Without a ControlPath the target names it; another master, another socket.
    other = forward.plan(REMOTE, {"controlpath": "none"}, env)
    assert other is not None and other.local != fwd.local
    assert other == forward.plan(REMOTE, None, env)
    long_runtime = tmp_path / ("r" * 100)
    long_runtime.mkdir(mode=0o700)
    fallback = forward.plan(REMOTE, None, {**env, "XDG_RUNTIME_DIR": str(long_runtime)})
    assert fallback is not None and fallback.local.parent == cache / "hpcops"


def test_a_configured_socket_needs_no_cache(env: dict[str, str]) -> None:
    remote = Remote(host="lab-otp", socket="/srv/lab/hpcops.sock")
    fwd = forward.plan(remote, None, env)
    assert fwd is not None and fwd.remote == "/srv/lab/hpcops.sock" and fwd.cache is None


@pytest.mark.parametrize(
    ("error", "step"),
    [
        (None, "use"),
        (errno.ENOENT, "forward"),
        (errno.ECONNREFUSED, "forward"),
        (errno.EACCES, "exec"),
        (errno.ENOTSOCK, "exec"),
        (errno.ELOOP, "exec"),
    ],
)
def test_after_connect(error: int | None, step: str) -> None:
    assert forward.after_connect(error) == step


def test_forward_failure_reads_ssh_stderr() -> None:
    assert forward.forward_failure(0, "") is None
    no_master = "Control socket connect(/home/ana/.ssh/cm-5e1c): No such file or directory\r\n"
    assert forward.forward_failure(255, no_master) == "no master connection is open"
    no_path = 'No ControlPath specified for "-O" command\r\n'
    assert forward.forward_failure(255, no_path) == "no ControlPath for this host in ~/.ssh/config"
    assert forward.forward_failure(255, "") == "ssh -O forward exited 255"
    assert forward.no_master_possible({"controlpath": "none"})
    assert forward.no_master_possible({})
    assert not forward.no_master_possible({"controlpath": "/home/ana/.ssh/cm-1"})


def test_forward_argv_asks_the_master_and_clears_nothing(tmp_path: Path) -> None:
    fwd = forward.Forward(tmp_path / "f.sock", SOCK, None)
    argv = forward.forward_argv(REMOTE, ["ssh", "-p", "2222"], fwd, "forward")
    assert argv == [
        "ssh",
        "-p",
        "2222",
        "-o",
        "BatchMode=yes",
        "-O",
        "forward",
        "-L",
        f"{tmp_path / 'f.sock'}:{SOCK}",
        "--",
        "lab-otp",
    ]
    assert not any("ClearAllForwardings" in word for word in argv)


def test_without_a_known_socket_the_attempt_asks_to_learn() -> None:
    attempt = forward.connect_forwarded(REMOTE, ["ssh"], None, 1.0)
    assert attempt.sock is None and attempt.learn
    configured = Remote(host="h", socket=SOCK)
    assert not forward.connect_forwarded(configured, ["ssh"], None, 1.0).learn


def test_a_live_forward_is_used_without_asking_ssh(tmp_path: Path) -> None:
    local = tmp_path / "f.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(local))
        server.listen(1)
        fwd = forward.Forward(local, SOCK, None)
        # "/nonexistent/ssh": any use of ssh would fail the attempt.
        attempt = forward.connect_forwarded(REMOTE, ["/nonexistent/ssh"], fwd, 1.0)
        assert attempt.sock is not None and not attempt.added
        attempt.sock.close()


def test_something_not_ours_at_the_local_path_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep")
    local = tmp_path / "f.sock"
    local.symlink_to(target)
    fwd = forward.Forward(local, SOCK, None)
    attempt = forward.connect_forwarded(REMOTE, ["/nonexistent/ssh"], fwd, 1.0)
    assert attempt.sock is None and local.is_symlink() and target.read_text() == "keep"


def test_a_stale_socket_is_removed_then_the_master_asked(tmp_path: Path) -> None:
    local = tmp_path / "f.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(local))  # bound, never listening: ECONNREFUSED, as after a master died
    fwd = forward.Forward(local, SOCK, None)
    attempt = forward.connect_forwarded(REMOTE, ["/nonexistent/ssh"], fwd, 1.0)
    assert attempt.sock is None and "could not run ssh -O" in attempt.detail
    assert not local.exists(), "the stale file went"


def test_client_config_socket_field() -> None:
    config = parse_client_config({"remotes": {"lab": {"host": "h", "socket": SOCK}}})
    assert config.remotes["lab"].socket == SOCK
    for bad in ("relative.sock", "/a:/b", "/a/../b", "/" + "a" * 107, 7):
        with pytest.raises(ConfigError, match=r"remotes\.lab\.socket: must be the absolute"):
            parse_client_config({"remotes": {"lab": {"host": "h", "socket": bad}}})


def test_remote_check_prints_the_forward() -> None:
    from hpcops.cli.remotes import _text

    report = {
        "remote": "lab",
        "transport": "openssh",
        "reason": "the remote says transport: openssh",
        "target": {"user": "ana", "host": "h", "port": 22, "source": "ssh -G h"},
        "master": {"open": True, "detail": "Master running (pid=1)"},
        "api": {"ok": True, "round_trip_ms": 60.0, "version": "0", "lab": "l", "caller": "ana"},
        "forward": {"up": True, "local": "/run/f.sock", "remote": SOCK, "round_trip_ms": 1.5},
    }
    assert f"  forward   : up, /run/f.sock -> {SOCK}, answers in 1.5 ms" in _text(report)
    report["forward"] = {"up": False, "detail": "no master connection is open"}
    assert "  forward   : not used (no master connection is open)" in _text(report)
    del report["forward"]
    assert "forward" not in _text(report)


# A stand-in for `ssh`: `-O ...` answers as with no master open; a session plays `hpcops api`,
# answering every request (a ping with the daemon's socket) and logging each line it got.
FAKE_SSH = """#!{python}
import json, sys
log = open({log!r}, "a")
if "-O" in sys.argv:
    log.write("control " + sys.argv[sys.argv.index("-O") + 1] + "\\n")
    sys.stderr.write("Control socket connect(/nowhere/cm): No such file or directory\\n")
    sys.exit(255)
for line in sys.stdin:
    log.write("exec " + line)
    log.flush()
    request = json.loads(line)
    result = {{"socket": {sock!r}, "via": "exec"}}
    answer = {{"v": 1, "id": request["id"], "ok": True, "result": result}}
    sys.stdout.write(json.dumps(answer) + "\\n")
    sys.stdout.flush()
"""


class FakeDaemon:
    """The far end of a forward, listening where the master would: answers `answers`
    requests, then closes the connection."""

    def __init__(self, path: Path, answers: int) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.got: list[dict[str, object]] = []
        self.answers = answers
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rb") as reader:
            for line in reader:
                request = json.loads(line)
                self.got.append(request)
                if len(self.got) > self.answers:
                    return  # closes: EOF after the request was written
                answer = {"v": 1, "id": request["id"], "ok": True, "result": {"via": "fwd"}}
                conn.sendall(json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.server.close()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    runtime = Path(tempfile.mkdtemp(prefix="fwd-", dir="/tmp"))  # short: a socket path
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    log = tmp_path / "ssh.log"
    ssh = tmp_path / "ssh"
    ssh.write_text(FAKE_SSH.format(python=sys.executable, log=str(log), sock=SOCK))
    ssh.chmod(0o755)
    yield str(ssh), log
    shutil.rmtree(runtime, ignore_errors=True)


OPTIONS = {"controlpath": "/home/ana/.ssh/cm-1"}


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_the_first_call_learns_the_socket_over_hpcops_api(fake: tuple[str, Path]) -> None:
    ssh, log = fake
    with OpenSshClient("lab", REMOTE, ssh, OPTIONS) as client:
        assert client.call("ls") == {"socket": SOCK, "via": "exec"}
        assert not client.forwarded
    assert [json.loads(line[5:])["method"] for line in _lines(log)] == ["ping", "ls"]
    assert forward.read_cached_socket(forward.cache_file(REMOTE), REMOTE) == SOCK
    # No ControlPath: no forward to try, nothing to learn.
    log.unlink()
    with OpenSshClient("lab", REMOTE, ssh, {"controlpath": "none"}) as client:
        client.call("ls")
    assert [json.loads(line[5:])["method"] for line in _lines(log)] == ["ls"]


def test_a_live_forward_carries_every_call_and_no_session(fake: tuple[str, Path]) -> None:
    ssh, log = fake
    forward.write_cached_socket(forward.cache_file(REMOTE), REMOTE, SOCK)
    fwd = forward.plan(REMOTE, OPTIONS)
    assert fwd is not None
    daemon = FakeDaemon(fwd.local, answers=2)
    try:
        with OpenSshClient("lab", REMOTE, ssh, OPTIONS) as client:
            assert client.call("submit", spec={}) == {"via": "fwd"}
            assert client.call("show", run=1) == {"via": "fwd"}
            assert client.forwarded
    finally:
        daemon.close()
    assert [r["method"] for r in daemon.got] == ["submit", "show"]
    assert _lines(log) == [], "no ssh at all"


def test_eof_after_a_request_is_an_error_never_a_second_send(fake: tuple[str, Path]) -> None:
    ssh, log = fake
    cache = forward.cache_file(REMOTE)
    forward.write_cached_socket(cache, REMOTE, SOCK)
    fwd = forward.plan(REMOTE, OPTIONS)
    assert fwd is not None
    daemon = FakeDaemon(fwd.local, answers=0)
    try:
        with (
            OpenSshClient("lab", REMOTE, ssh, OPTIONS) as client,
            pytest.raises(RemoteUnreachable, match="lost the SSH connection to remote 'lab'"),
        ):
            client.call("submit", spec={})
    finally:
        daemon.close()
    assert [r["method"] for r in daemon.got] == ["submit"]
    assert not any(line.startswith("exec") for line in _lines(log)), "not sent again"
    assert _lines(log) == ["control check"], "only asked whether the master is open"
    assert not cache.exists(), "the next call learns the socket again"


def test_no_forward_and_no_master_take_the_exec_path_once(fake: tuple[str, Path]) -> None:
    ssh, log = fake
    forward.write_cached_socket(forward.cache_file(REMOTE), REMOTE, SOCK)
    with OpenSshClient("lab", REMOTE, ssh, OPTIONS) as client:
        assert client.call("submit", spec={}) == {"socket": SOCK, "via": "exec"}
        assert client.attempt is not None
        assert client.attempt.detail == "no master connection is open"
    lines = _lines(log)
    assert lines[0] == "control forward"
    assert [json.loads(line[5:])["method"] for line in lines[1:]] == ["submit"]
