"""The daemon's API on a Unix domain socket.

Who calls is read from the socket (SO_PEERCRED): the kernel's word, not the client's. The socket
lives in the daemon's home with mode 0600 (0660 with access.socket_group), so nobody else can
even connect.

    server.py      the socket, peer credentials, dispatch, the audit of refusals
    params.py      what each method accepts (typed request models) and the refusals
    handlers/      the methods, by group: runs, queue (on a sweep or a pipeline:
                   sweep_requests), pipelines, code_cache, schedules, lab
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import socketserver
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcops.access import Caller, group_gid, role_of, unix_groups
from hpcops.api import protocol
from hpcops.api.handlers.base import Daemon, Handler, Request
from hpcops.api.handlers.code_cache import CodeCacheHandlers
from hpcops.api.handlers.lab import LabHandlers
from hpcops.api.handlers.pipelines import PipelineHandlers
from hpcops.api.handlers.queue import QueueHandlers
from hpcops.api.handlers.runs import RunHandlers
from hpcops.api.handlers.schedules import ScheduleHandlers
from hpcops.api.params import pipeline_id, sweep_id
from hpcops.config import Config
from hpcops.errors import HpcopsError, InvalidInput, PermissionDenied, ProtocolError
from hpcops.store import Store

if TYPE_CHECKING:
    from hpcops.api.handlers.base import Engine
    from hpcops.code.mirror import CodeMirror
    from hpcops.data.cache import ContentCache
    from hpcops.scheduling.service import ScheduleService
    from hpcops.tracking.worker import Tracker
    from hpcops.transport.base import Transport

log = logging.getLogger(__name__)


def peer_caller(sock: socket.socket) -> Caller:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    return Caller(uid=uid, name=name)


class Api:
    """Dispatch: who calls (their role from the config), which method, and every answer in the
    wire format, errors included. The handlers (api/handlers/) do the work; every refusal is
    audited here, every change by its handler."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        *,
        config: Config,
        home: Path,
        files: Transport,
        code_mirror: CodeMirror,
        data_cache: ContentCache,
        tracker: Tracker | None,
        started_at: float,
        daemon_uid: int,
        schedules: ScheduleService | None = None,
    ) -> None:
        self.daemon = Daemon(
            engine=engine,
            store=store,
            config=config,
            home=home,
            files=files,
            code_mirror=code_mirror,
            data_cache=data_cache,
            tracker=tracker,
            schedules=schedules,
            started_at=started_at,
            daemon_uid=daemon_uid,
        )
        self.methods: dict[str, Handler] = {}
        for group in (
            LabHandlers(self.daemon),
            RunHandlers(self.daemon),
            QueueHandlers(self.daemon),
            PipelineHandlers(self.daemon),
            CodeCacheHandlers(self.daemon),
            ScheduleHandlers(self.daemon),
        ):
            self.methods.update(group.methods())

    def handle(self, caller: Caller, message: dict[str, Any]) -> dict[str, Any]:
        request_id = message.get("id")
        method = message.get("method")
        access = self.daemon.config.access
        role = role_of(
            caller, access, daemon_uid=self.daemon.daemon_uid, groups=unix_groups(caller.name)
        )
        try:
            protocol.check_version(message, "client")
            handler = self.methods.get(method) if isinstance(method, str) else None
            if handler is None:
                raise ProtocolError(
                    f"unknown method {method!r}; known: {', '.join(sorted(self.methods))}"
                )
            params = message.get("params", {})
            if not isinstance(params, dict):
                raise InvalidInput("params must be a JSON object")
            return protocol.ok(request_id, handler(Request(caller, role, params)))
        except PermissionDenied as exc:
            log.warning("refused %s from %s (%s): %s", method, caller.name, role, exc.message)
            self.daemon.audit(
                caller, role, str(method), _target(message), allowed=False, detail=exc.message
            )
            return protocol.failure(request_id, exc)
        except HpcopsError as exc:
            if isinstance(exc, InvalidInput):
                log.info("invalid %s from %s: %s", method, caller.name, exc.message.splitlines()[0])
            return protocol.failure(request_id, exc)
        except Exception as exc:  # a bug must cost one request, not the daemon
            log.exception("internal error handling %s", method)
            return protocol.failure(
                request_id,
                HpcopsError(f"internal error in the daemon: {exc} (see the daemon's log)"),
            )


def _target(message: dict[str, Any]) -> str:
    """What a refused request was about, for the audit log (its params are not checked yet)."""
    params = message.get("params")

    def shown(value: Any) -> str:
        # repr of a cut value: a refused request may carry megabytes in any field.
        return repr(value if not isinstance(value, str) else value[:100])[:120]

    if isinstance(params, dict):
        if "run" in params:
            value = params["run"]
            if isinstance(value, str) and sweep_id(value) is not None:
                return f"sweep {sweep_id(value)}"
            if isinstance(value, str) and pipeline_id(value) is not None:
                return f"pipeline {pipeline_id(value)}"
            return f"run {shown(value)}"
        if isinstance(params.get("pipeline"), str):
            found = pipeline_id(params["pipeline"])
            return f"pipeline {found}" if found is not None else shown(params["pipeline"])
        if "schedule" in params:
            return f"schedule {shown(params['schedule'])}"
        if "scope" in params:
            return f"quota {shown(params.get('scope'))}.{shown(params.get('resource'))}"
    return shown(message.get("method"))


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

    def __init__(self, path: Path, api: Api, *, group: str | None = None) -> None:
        """The socket admits the daemon's account, and with `group` that Unix group too: anyone
        else cannot even connect (the kernel refuses, before any hpcops code runs)."""
        self.api = api
        path.unlink(missing_ok=True)  # a stale socket from a killed daemon; the lock says we own it
        old_umask = os.umask(0o177)  # no window in which the socket is more open than 0600
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old_umask)
        if group is not None:
            os.chown(path, -1, group_gid(group))
            path.chmod(0o660)
