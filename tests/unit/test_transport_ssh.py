"""The SSH transport's decisions, on plain data: when a new connection may be opened, and how the
one-command marker read is built and parsed. The transport against a real sshd is tested in
tests/integration/test_ssh_backend.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePath

import paramiko
import pytest

from hpcops.errors import RemoteUnreachable
from hpcops.transport.base import SMALL_FILE_MAX_BYTES, TransportError
from hpcops.transport.ssh import (
    _READ_SMALL_FILES,
    ReconnectLimiter,
    SshTransport,
    parse_small_files,
)
from hpcops.transport.ssh_connect import SshTarget, parse_jump


def test_the_first_connection_is_at_once_then_one_per_interval() -> None:
    limiter = ReconnectLimiter(min_interval_s=60)
    assert limiter.may_connect(0.0)
    limiter.attempted(0.0, ok=True)
    assert not limiter.may_connect(59.9)
    assert limiter.may_connect(60.0)
    # A connection that lived for an hour and then dropped is reopened at once.
    limiter.attempted(60.0, ok=True)
    assert limiter.may_connect(3660.0)


def test_failed_attempts_back_off_exponentially_up_to_the_cap() -> None:
    limiter = ReconnectLimiter(min_interval_s=10, backoff_max_s=75)
    waits = []
    now = 0.0
    for _ in range(6):
        limiter.attempted(now, ok=False)
        waits.append(limiter.next_allowed_at() - now)
        now = limiter.next_allowed_at()
    assert waits == [10, 20, 40, 75, 75, 75]
    limiter.attempted(now, ok=True)
    assert limiter.next_allowed_at() - now == 10, "a success resets the back-off"


def test_the_interval_is_a_floor_even_when_longer_than_the_cap() -> None:
    limiter = ReconnectLimiter(min_interval_s=600, backoff_max_s=300)
    for _ in range(5):
        limiter.attempted(0.0, ok=False)
    assert limiter.delay_s() == 600


def test_connections_opened_per_hour_stay_within_the_limit_under_constant_drops() -> None:
    """A connection dropped every 7 s for an hour, with a call every second that wants it."""
    limiter = ReconnectLimiter(min_interval_s=60)
    opened, connected_at = 0, None
    for second in range(3600):
        now = float(second)
        if connected_at is not None and now - connected_at >= 7:
            connected_at = None  # the server dropped it
        if connected_at is None and limiter.may_connect(now):
            limiter.attempted(now, ok=True)
            opened, connected_at = opened + 1, now
    assert opened == 60


def test_the_transport_asks_the_limiter_before_every_connection() -> None:
    """A cluster that refuses every connection: calls keep failing fast, and the connector is
    called only as often as the limiter allows (here: at 0, 5 and 15 s)."""
    now = [0.0]
    attempts: list[float] = []

    def refuse(target: SshTarget) -> paramiko.SSHClient:
        attempts.append(now[0])
        raise RemoteUnreachable("cannot reach labsvc@login (slurm.ssh): refused")

    transport = SshTransport(
        SshTarget(host="login", label="slurm.ssh", fix_hint="slurm.ssh", user="labsvc"),
        min_reconnect_interval_s=5,
        clock=lambda: now[0],
        connector=refuse,
    )
    messages = []
    for second in range(20):
        now[0] = float(second)
        with pytest.raises(TransportError) as info:
            transport.run(["squeue"], timeout_s=5)
        messages.append(str(info.value))
    assert attempts == [0.0, 5.0, 15.0]
    assert transport.connections_opened == 0
    assert "refused" in messages[0]
    assert "next attempt in 4 s" in messages[1] and "last error: cannot reach" in messages[1]


def test_marker_read_output_maps_back_to_paths() -> None:
    paths = [PurePath("/r/run-000001/hpcops.started"), PurePath("/r/run-000001/hpcops.exit")]
    out = "1\t0 1700000010\n0\t1700000000 node1 42\nnoise\n7\tout of range\n"
    assert parse_small_files(paths, out) == {
        paths[0]: "1700000000 node1 42",
        paths[1]: "0 1700000010",
    }


def test_the_marker_read_script_reads_regular_files_only(tmp_path: Path) -> None:
    """The shell script the SSH transport runs on the login node, run here by bash: a FIFO, a
    directory, a link and a missing path are skipped without blocking, a line without newline is
    read, and a huge marker with no newline costs at most SMALL_FILE_MAX_BYTES."""
    (tmp_path / "started").write_text("1700000000 node1 42\n")
    (tmp_path / "partial").write_text("3 1700000010")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "secret").write_text("MLFLOW_TRACKING_PASSWORD=hunter2\n")
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    (tmp_path / "huge").write_bytes(b"9" * (16 * 1024 * 1024))  # 16 MiB, no newline
    names = ("started", "fifo", "dir", "missing", "partial", "link", "huge")
    paths = [tmp_path / n for n in names]
    out = subprocess.run(
        ["bash", "-c", _READ_SMALL_FILES],
        input="".join(f"{p}\n" for p in paths),
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert parse_small_files(paths, out) == {
        paths[0]: "1700000000 node1 42",
        paths[4]: "3 1700000010",
        paths[6]: "9" * SMALL_FILE_MAX_BYTES,
    }
    assert len(out) < 2 * SMALL_FILE_MAX_BYTES


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("jump", (None, "jump", None)),
        ("ana@jump.example.edu", ("ana", "jump.example.edu", None)),
        ("ana@127.0.0.1:2200", ("ana", "127.0.0.1", 2200)),
        ("[::1]:2200", (None, "::1", 2200)),
        ("ssh://x", None),
    ],
)
def test_a_proxyjump_hop_is_read_as_ssh_reads_it(
    spec: str, parsed: tuple[str | None, str, int | None] | None
) -> None:
    if parsed is None:
        with pytest.raises(RemoteUnreachable):
            parse_jump(spec)
    else:
        assert parse_jump(spec) == parsed
