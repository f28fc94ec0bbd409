"""The daemon's API on a Unix domain socket.

Who calls is read from the socket (SO_PEERCRED): the kernel's word, not the client's. The socket
lives in the daemon's home with mode 0600, so for now only the daemon's own account can connect.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import socketserver
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcops import __version__
from hpcops.api import protocol
from hpcops.api.views import event_view, iso, run_view
from hpcops.errors import HpcopsError, InvalidInput, ProtocolError
from hpcops.orchestrator import Caller, Orchestrator
from hpcops.rundir import RunDir
from hpcops.states import RunState
from hpcops.store import Store

log = logging.getLogger(__name__)

MAX_LOG_CHUNK_BYTES = 1024 * 1024
MAX_SPECS_PER_SUBMIT = 1000
MAX_LIST = 100_000


def peer_caller(sock: socket.socket) -> Caller:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    return Caller(uid=uid, name=name)


class Api:
    """Request handlers: plain methods taking the caller and the params, returning JSON data."""

    def __init__(self, orchestrator: Orchestrator, store: Store, *, started_at: float) -> None:
        self.orchestrator = orchestrator
        self.store = store
        self.started_at = started_at
        self.methods: dict[str, Callable[[Caller, dict[str, Any]], Any]] = {
            "ping": self.ping,
            "submit": self.submit,
            "validate": self.validate,
            "list": self.list_runs,
            "show": self.show,
            "history": self.history,
            "logs": self.logs,
            "cancel": self.cancel,
        }

    def handle(self, caller: Caller, message: dict[str, Any]) -> dict[str, Any]:
        request_id = message.get("id")
        try:
            protocol.check_version(message, "client")
            method = message.get("method")
            handler = self.methods.get(method) if isinstance(method, str) else None
            if handler is None:
                raise ProtocolError(
                    f"unknown method {method!r}; known: {', '.join(sorted(self.methods))}"
                )
            params = message.get("params", {})
            if not isinstance(params, dict):
                raise InvalidInput("params must be a JSON object")
            return protocol.ok(request_id, handler(caller, params))
        except HpcopsError as exc:
            if isinstance(exc, InvalidInput):
                log.info(
                    "refused %s from %s: %s",
                    message.get("method"),
                    caller.name,
                    exc.message.splitlines()[0],
                )
            return protocol.failure(request_id, exc)
        except Exception as exc:  # a bug must cost one request, not the daemon
            log.exception("internal error handling %s", message.get("method"))
            return protocol.failure(
                request_id,
                HpcopsError(f"internal error in the daemon: {exc} (see the daemon's log)"),
            )

    # --- methods ----------------------------------------------------------------------------

    def ping(self, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        health = self.orchestrator.health
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "started_at": iso(self.started_at),
            "uptime_s": round(time.time() - self.started_at, 1),
            "caller": caller.name,
            "lab": self.orchestrator.config.lab,
            "home": str(self.orchestrator.home),
            "runs": self.store.counts_by_state(),
            "slurm": {
                "reachable": health.reachable,
                "unreachable_since": iso(health.since),
                "last_error": health.last_error or None,
                "last_poll_at": iso(self.orchestrator.last_queue_at),
            },
        }

    def submit(self, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        specs = params.get("specs")
        if not isinstance(specs, list) or not specs:
            raise InvalidInput("params.specs must be a non-empty list of {yaml, source}")
        if len(specs) > MAX_SPECS_PER_SUBMIT:
            raise InvalidInput(f"at most {MAX_SPECS_PER_SUBMIT} specs per request")
        pairs = [(_str(s, "yaml"), _str(s, "source")) for s in specs]
        runs = self.orchestrator.enqueue(pairs, caller)
        return {"runs": [{"id": r.id, "name": r.name, "state": r.state} for r in runs]}

    def validate(self, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        from hpcops.spec import parse_spec

        source = _str(params, "source")
        spec = parse_spec(_str(params, "yaml"), source)
        self.orchestrator.check_spec(spec, source)
        return {"valid": True, "name": spec.name}

    def list_runs(self, caller: Caller, params: dict[str, Any]) -> list[dict[str, Any]]:
        states = params.get("states")
        wanted = None
        if states is not None:
            if not isinstance(states, list):
                raise InvalidInput("params.states must be a list of state names")
            wanted = [_state(s) for s in states]
        limit = params.get("limit")
        if limit is not None and (not isinstance(limit, int) or not 1 <= limit <= MAX_LIST):
            raise InvalidInput(f"params.limit must be an integer from 1 to {MAX_LIST}")
        runs = self.store.list_runs(wanted, limit=limit, newest_first=True)
        return [run_view(r) for r in runs]

    def show(self, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        return run_view(self.store.get(_run_id(params)), detail=True)

    def history(self, caller: Caller, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [event_view(e) for e in self.store.events(_run_id(params))]

    def logs(self, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        run = self.store.get(_run_id(params))
        stream = params.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise InvalidInput("params.stream must be 'stdout' or 'stderr'")
        offset = params.get("offset", 0)
        max_bytes = params.get("max_bytes", 65536)
        if not isinstance(offset, int) or not isinstance(max_bytes, int):
            raise InvalidInput("params.offset and params.max_bytes must be integers")
        max_bytes = max(1, min(max_bytes, MAX_LOG_CHUNK_BYTES))
        path = (
            (
                RunDir(Path(run.run_dir)).stdout
                if stream == "stdout"
                else RunDir(Path(run.run_dir)).stderr
            )
            if run.run_dir
            else None
        )
        data, size, new_offset = b"", 0, max(offset, 0)
        if path is not None:
            try:
                with path.open("rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    # A negative offset asks for the last -offset bytes (tail).
                    start = max(0, size + offset) if offset < 0 else min(offset, size)
                    f.seek(start)
                    data = f.read(max_bytes)
                    new_offset = start + len(data)
            except FileNotFoundError:
                pass
        done = RunState(run.state).is_terminal and new_offset >= size
        return {
            "data": data.decode("utf-8", errors="replace"),
            "offset": new_offset,
            "size": size,
            "state": run.state,
            "done": done,
        }

    def cancel(self, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        run, message = self.orchestrator.cancel(_run_id(params), caller)
        return {"id": run.id, "state": run.state, "message": message}


def _str(params: Any, key: str) -> str:
    value = params.get(key) if isinstance(params, dict) else None
    if not isinstance(value, str):
        raise InvalidInput(f"params.{key} must be a string")
    return value


def _run_id(params: dict[str, Any]) -> int:
    value = params.get("run")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"a run id is a positive integer, not {value!r}")
    return value


def _state(name: Any) -> RunState:
    try:
        return RunState(str(name).upper())
    except ValueError:
        raise InvalidInput(
            f"unknown state {name!r}; states are: {', '.join(s.value for s in RunState)}"
        ) from None


class _Handler(socketserver.StreamRequestHandler):
    server: ApiServer

    def handle(self) -> None:
        caller = peer_caller(self.connection)
        while True:
            line = self.rfile.readline(protocol.MAX_LINE_BYTES + 1)
            if not line:
                return
            if len(line) > protocol.MAX_LINE_BYTES:
                error = ProtocolError(f"request over {protocol.MAX_LINE_BYTES} bytes")
                self.wfile.write(protocol.encode(protocol.failure(None, error)))
                return
            try:
                message = protocol.decode(line)
            except ProtocolError as exc:
                self.wfile.write(protocol.encode(protocol.failure(None, exc)))
                return
            response = self.server.api.handle(caller, message)
            self.wfile.write(protocol.encode(response))
            self.wfile.flush()


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: Path, api: Api, mode: int = 0o600) -> None:
        self.api = api
        path.unlink(missing_ok=True)  # a stale socket from a killed daemon; the lock says we own it
        old_umask = os.umask(0o177)  # no window in which the socket is more open than `mode`
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old_umask)
        path.chmod(mode)
