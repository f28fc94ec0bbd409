"""The daemon process: one per home, holding the home's lock for its whole life.

Three threads: the API server (one short-lived thread per connection), the loop in the main
thread, and APScheduler's, which fires the schedules (scheduling/service.py). SIGTERM or SIGINT
ends the current tick and exits cleanly; kill -9 loses nothing because
every step is committed before the next one starts (see hpcops/lifecycle.py).

This module is the one factory of the daemon's collaborators (`build_engine`): the transport,
the Slurm backend, the code mirror, the data cache and the MLflow tracker are built here from
the config, and passed in; nothing inside the engine or the API builds its own.
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from hpcops.access import group_gid
from hpcops.api.server import Api, ApiServer
from hpcops.client.client import Client
from hpcops.code.git import GitError
from hpcops.code.mirror import CodeMirror, MirrorError
from hpcops.config import Config, load_config
from hpcops.data.cache import ContentCache
from hpcops.engine import Engine
from hpcops.errors import (
    AlreadyRunning,
    AuthenticationFailed,
    ConfigError,
    HostKeyRejected,
    HpcopsError,
    NotRunning,
)
from hpcops.home import HomePaths, network_home
from hpcops.scheduling.service import ScheduleService
from hpcops.slurm.backend import CommandBackend
from hpcops.store import Store
from hpcops.transport.base import Transport
from hpcops.transport.local import LocalTransport

if TYPE_CHECKING:
    from hpcops.tracking.worker import Tracker

log = logging.getLogger("hpcops")


def _acquire_lock(paths: HomePaths) -> IO[str]:
    handle = paths.lock.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        pid = _read_pid(paths)
        raise AlreadyRunning(
            f"another hpcops daemon (pid {pid or '?'}) owns {paths.home}; "
            "`hpcops daemon status` shows it"
        ) from None
    return handle


def _read_pid(paths: HomePaths) -> int | None:
    try:
        return int(paths.pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _setup_logging(paths: HomePaths, config: Config, foreground: bool) -> None:
    handler = logging.handlers.RotatingFileHandler(
        paths.log, maxBytes=config.daemon.log_max_bytes, backupCount=config.daemon.log_backups
    )
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if foreground:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        root.addHandler(console)
    root.setLevel(config.daemon.log_level)


def build_transport(config: Config, home: Path) -> tuple[Transport, str | None]:
    """This machine, or the login node over SSH (slurm.transport); and the account the jobs
    run as there, when it is not the daemon's own (None)."""
    ssh = config.slurm.ssh
    if config.slurm.transport == "local" or ssh is None:
        # Jobs write inside these; the transport opens nothing below them through a link.
        roots = [config.run_root_in(home), config.data_cache_in(home)]
        if config.tracking.relay_root is not None:
            roots.append(config.tracking.relay_root)
        return LocalTransport(trusted_roots=roots), None
    from hpcops.transport.ssh import SshTransport
    from hpcops.transport.ssh_connect import SshTarget

    transport = SshTransport(
        SshTarget(
            host=ssh.host,
            label="slurm.ssh",
            fix_hint="slurm.ssh in the daemon's config (or its account's ~/.ssh/config)",
            user=ssh.user,
            port=ssh.port,
            identity_file=ssh.identity_file,
            known_hosts=ssh.known_hosts,
            connect_timeout_s=ssh.connect_timeout_s,
        ),
        min_reconnect_interval_s=ssh.min_reconnect_interval_s,
        io_timeout_s=config.slurm.command_timeout_s,
    )
    try:
        transport.connect_now()
    except (HostKeyRejected, AuthenticationFailed):
        raise  # a configuration that can never work: refuse to start, and say why
    except HpcopsError as exc:
        # The cluster may just be down right now: start, keep answering clients, retry later.
        log.warning("cannot reach the cluster yet, will retry: %s", exc)
    return transport, transport.remote_user


@dataclass(frozen=True)
class Collaborators:
    """The daemon's collaborators, each built once, from settings."""

    engine: Engine
    files: Transport
    code_mirror: CodeMirror
    data_cache: ContentCache
    tracker: Tracker | None


def build_engine(store: Store, config: Config, home: Path) -> Collaborators:
    """The one place that turns settings into real collaborators, and the engine over them."""
    transport, cluster_user = build_transport(config, home)
    backend = CommandBackend(
        transport,
        account=config.slurm.account,
        # Off the cluster, jobs belong to the account the SSH connection logs in as.
        user=cluster_user,
        timeout_s=config.slurm.command_timeout_s,
    )
    code_mirror = CodeMirror(
        config.code_root_in(home),
        state=HomePaths(home).mirror_state,
        group=config.access.socket_group,
        fetch_timeout_s=config.code.fetch_timeout_s,
    )
    data_cache = ContentCache(config.data_cache_in(home))
    tracker = None
    if config.tracking.enabled:
        from hpcops.tracking.worker import Tracker

        tracker = Tracker(store, config, home)
    engine = Engine(
        store,
        backend,
        transport,
        config,
        home,
        code_mirror=code_mirror,
        data_cache=data_cache,
        tracker=tracker,
        fault=os.environ.get("HPCOPS_FAULT"),
    )
    return Collaborators(engine, transport, code_mirror, data_cache, tracker)


def check_home(home: Path, *, allow_network_home: bool) -> None:
    """Refuse a home on a network filesystem unless the caller says they know: compute nodes
    share such storage with the login node, so members' jobs (running as this account) could
    rewrite the database, config or socket, and SQLite's locking is not safe there."""
    fs_type = network_home(home)
    if fs_type is None or allow_network_home:
        return
    raise ConfigError(
        f"the daemon's home {home} is on {fs_type}, a network filesystem: jobs on the compute "
        "nodes may be able to write there (they run as this account), and SQLite's locking is "
        "not safe on it. Put HPCOPS_HOME on the login node's own disk (for example "
        "/var/lib/hpcops/<lab>), or pass --allow-network-home if this filesystem is not "
        "mounted on any compute node and supports POSIX locks."
    )


def run_daemon(
    home: Path, config_path: Path | None, *, foreground: bool, allow_network_home: bool = False
) -> None:
    # Members reach the daemon through its socket only; the database, logs and run files are
    # the daemon's account's alone.
    os.umask(0o077)
    check_home(home, allow_network_home=allow_network_home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = HomePaths(home)
    config = load_config(config_path, home)
    lock = _acquire_lock(paths)
    _setup_logging(paths, config, foreground)
    stop = threading.Event()
    started_at = time.time()
    store = Store(paths.database, track=config.tracking.enabled)
    built = build_engine(store, config, home)
    engine, tracker = built.engine, built.tracker
    group = config.access.socket_group
    if group is not None:
        _open_home_to(home, group)
    try:
        built.data_cache.ensure()
        built.code_mirror.ensure()
    except (OSError, GitError, MirrorError, KeyError) as exc:
        # Runs without code: need no mirror; a spec with code: gets this error at submit.
        log.warning("the code mirror in %s is not usable: %s", built.code_mirror.root, exc)
    schedules = ScheduleService(
        store, engine, config, daemon_uid=os.getuid(), fault=os.environ.get("HPCOPS_FAULT")
    )
    api = Api(
        engine,
        store,
        config=config,
        home=home,
        files=built.files,
        code_mirror=built.code_mirror,
        data_cache=built.data_cache,
        tracker=tracker,
        started_at=started_at,
        daemon_uid=os.getuid(),
        schedules=schedules,
    )
    server = ApiServer(paths.socket, api, group=group)
    server_thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping after the current step", signal.Signals(signum).name)
        stop.set()
        engine.wake()
        if tracker is not None:
            tracker.wake.set()

    def _resume_schedules() -> None:
        # Schedules fire once the first tick (start-up reconciliation) has run.
        while not engine.wait_first_tick(0.5):
            if stop.is_set():
                return
        first_tick_done.set()
        schedules.resume_after(first_tick_done, stop)

    first_tick_done = threading.Event()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    # Before the API: a request about schedules finds APScheduler agreeing with our table.
    schedules.start()
    paths.pid.write_text(f"{os.getpid()}\n")
    server_thread.start()
    threading.Thread(target=_resume_schedules, name="schedules-start", daemon=True).start()
    if tracker is not None:
        # MLflow requests happen on this thread only: a slow or absent tracking server never
        # holds up the loop or the API.
        threading.Thread(
            target=tracker.run_forever, args=(stop,), name="tracking", daemon=True
        ).start()
    log.info(
        "hpcops daemon %d started in %s (lab %s, max_active %d)",
        os.getpid(),
        home,
        config.lab,
        config.max_active,
    )
    try:
        engine.run_forever(stop)
    finally:
        server.shutdown()
        server.server_close()
        schedules.shutdown()
        paths.socket.unlink(missing_ok=True)
        paths.pid.unlink(missing_ok=True)
        built.files.close()
        store.close()
        log.info("hpcops daemon %d stopped", os.getpid())
        lock.close()


def _open_home_to(home: Path, group: str) -> None:
    """Let the lab's group reach the socket: the home becomes group-traversable (0750). The
    database and logs inside stay the daemon's own (run_daemon's umask makes them 0600)."""
    os.chown(home, -1, group_gid(group))
    home.chmod(0o750)


def start_background(
    home: Path,
    config_path: Path | None,
    *,
    timeout_s: float = 30.0,
    allow_network_home: bool = False,
) -> int:
    """Start `hpcops daemon run` detached and wait until it answers; return its pid."""
    check_home(home, allow_network_home=allow_network_home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = HomePaths(home)
    if _answers(paths):
        raise AlreadyRunning(f"a daemon already runs for {home} (pid {_read_pid(paths)})")
    argv = [sys.executable, "-m", "hpcops", "--home", str(home), "daemon", "run"]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    if allow_network_home:
        argv.append("--allow-network-home")
    with paths.console.open("ab") as console:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=console,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HpcopsError(
                f"the daemon exited with status {proc.returncode} at start:\n{_tail(paths.console)}"
            )
        if _answers(paths):
            return proc.pid
        time.sleep(0.1)
    raise HpcopsError(
        f"the daemon (pid {proc.pid}) did not answer within {timeout_s:.0f} s; see {paths.log}"
    )


def stop_daemon(home: Path, *, timeout_s: float = 30.0) -> int:
    """SIGTERM the daemon that holds this home's lock and wait for it; return its pid."""
    paths = HomePaths(home)
    pid = _read_pid(paths)
    if pid is None or not _is_hpcops_process(pid):
        raise NotRunning(f"no hpcops daemon runs for {home}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _is_hpcops_process(pid):
            return pid
        time.sleep(0.1)
    raise HpcopsError(
        f"daemon {pid} did not stop within {timeout_s:.0f} s; it may be waiting "
        f"on a Slurm command (see {paths.log})"
    )


def _is_hpcops_process(pid: int) -> bool:
    """The pid is alive and is an hpcops daemon (not a recycled pid of something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return b"hpcops" in cmdline and b"daemon" in cmdline


def _answers(paths: HomePaths) -> bool:
    try:
        with Client(paths.socket, timeout_s=5.0) as client:
            client.call("ping")
        return True
    except HpcopsError:
        return False


def _tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        return path.read_bytes()[-max_bytes:].decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
