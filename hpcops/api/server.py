"""The daemon's API on a Unix domain socket.

Who calls is read from the socket (SO_PEERCRED): the kernel's word, not the client's. The socket
lives in the daemon's home with mode 0600, so for now only the daemon's own account can connect.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import socket
import socketserver
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcops import __version__
from hpcops.access import (
    LEADS,
    Caller,
    Role,
    authorize,
    check_priority,
    group_gid,
    role_of,
    unix_groups,
)
from hpcops.api import protocol
from hpcops.api.views import audit_view, event_view, iso, quota_view, run_view
from hpcops.errors import (
    HpcopsError,
    InvalidInput,
    PermissionDenied,
    ProtocolError,
)
from hpcops.orchestrator import Orchestrator
from hpcops.rundir import RunDir
from hpcops.states import RunState
from hpcops.store import Audit, QuotaOverride, Run, Store

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


@dataclass(frozen=True)
class Request:
    caller: Caller
    role: Role
    params: dict[str, Any]


# Methods that change something: each is audited, allowed or refused.
_MUTATING = {"submit", "cancel", "priority", "hold", "release", "top", "quota_set", "rerun"}


class Api:
    """Request handlers: plain methods taking a Request, returning JSON data. Every method
    checks the caller's role first (access.authorize), and every change or refusal is audited."""

    def __init__(
        self, orchestrator: Orchestrator, store: Store, *, started_at: float, daemon_uid: int
    ) -> None:
        self.orchestrator = orchestrator
        self.store = store
        self.started_at = started_at
        self.daemon_uid = daemon_uid
        self.access = orchestrator.config.access
        self.methods: dict[str, Callable[[Request], Any]] = {
            "ping": self.ping,
            "submit": self.submit,
            "validate": self.validate,
            "list": self.list_runs,
            "show": self.show,
            "history": self.history,
            "logs": self.logs,
            "why": self.why,
            "cancel": self.cancel,
            "priority": self.priority,
            "hold": self.hold,
            "release": self.release,
            "top": self.top,
            "quota_show": self.quota_show,
            "quota_set": self.quota_set,
            "audit": self.audit_log,
            "rerun": self.rerun,
        }

    def handle(self, caller: Caller, message: dict[str, Any]) -> dict[str, Any]:
        request_id = message.get("id")
        method = message.get("method")
        role = role_of(
            caller, self.access, daemon_uid=self.daemon_uid, groups=unix_groups(caller.name)
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
            self._audit(
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

    def _audit(
        self,
        caller: Caller,
        role: Role,
        action: str,
        target: str,
        *,
        allowed: bool,
        before: Any = None,
        after: Any = None,
        detail: str = "",
    ) -> None:
        self.store.audit(
            Audit(
                at=time.time(),
                actor=caller.name,
                role=role.value,
                action=action,
                target=target,
                before=None if before is None else str(before),
                after=None if after is None else str(after),
                allowed=allowed,
                detail=detail,
            )
        )

    def _run_for(self, req: Request, action: str) -> Run:
        """The run a request names, once the caller may do `action` to it."""
        run = self.store.get(_run_id(req.params))
        authorize(action, req.caller, req.role, owner=run.owner)
        return run

    # --- reading ----------------------------------------------------------------------------

    def ping(self, req: Request) -> dict[str, Any]:
        health = self.orchestrator.health
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "started_at": iso(self.started_at),
            "uptime_s": round(time.time() - self.started_at, 1),
            "caller": req.caller.name,
            "role": req.role.value,
            "lab": self.orchestrator.config.lab,
            "home": str(self.orchestrator.home),
            "runs": self.store.counts_by_state() if req.role is not Role.OUTSIDER else {},
            "slurm": {
                "reachable": health.reachable,
                "unreachable_since": iso(health.since),
                "last_error": health.last_error or None,
                "last_poll_at": iso(self.orchestrator.last_queue_at),
            },
        }

    def validate(self, req: Request) -> dict[str, Any]:
        from hpcops.spec import parse_spec

        authorize("submit", req.caller, req.role)
        source = _str(req.params, "source")
        spec = parse_spec(_str(req.params, "yaml"), source)
        self.orchestrator.check_spec(spec, source)
        check_priority(spec.priority, req.role, self.access)
        return {"valid": True, "name": spec.name}

    def list_runs(self, req: Request) -> list[dict[str, Any]]:
        """Runs in the lab's queue order: in Slurm, then queued in release order, then held;
        with `states`, those states newest first."""
        authorize("read", req.caller, req.role)
        states = req.params.get("states")
        limit = req.params.get("limit")
        if limit is not None and (not isinstance(limit, int) or not 1 <= limit <= MAX_LIST):
            raise InvalidInput(f"params.limit must be an integer from 1 to {MAX_LIST}")
        if states is not None and not isinstance(states, list):
            raise InvalidInput("params.states must be a list of state names")
        wanted = [_state(s) for s in states] if states is not None else None
        runs = self.store.list_runs(wanted, limit=limit, newest_first=True)
        runs = _queue_order(runs, self.orchestrator.last_decision)
        return [self._view(r) for r in runs]

    def _view(self, run: Run, *, detail: bool = False) -> dict[str, Any]:
        view = run_view(run, detail=detail)
        view["wait_reason"] = self.orchestrator.why(run) if RunState(run.state) in WAITING else None
        return view

    def show(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        run = self.store.get(_run_id(req.params))
        view = self._view(run, detail=True)
        view.update(self._tracking_view(run))
        return view

    def _tracking_view(self, run: Run) -> dict[str, Any]:
        """The run's MLflow record for `show` (read from the database: no server call)."""
        tracker = self.orchestrator.tracker
        if tracker is None:
            return {
                "mlflow_run_id": run.mlflow_run_id,
                "mlflow_experiment_id": run.mlflow_experiment_id,
                "mlflow_url": None,
                "mlflow_tracking_uri": None,
                "mlflow_relay_dir": run.mlflow_relay_dir,
                "tracking_pending": [],
                "tracking_error": None,
            }
        view = tracker.view(run)
        view["rerun_of_mlflow"] = run.rerun_of_mlflow
        view["rerun_of_run"] = run.rerun_of_run
        return view

    def why(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        run = self.store.get(_run_id(req.params))
        return {"id": run.id, "state": run.state, "why": self.orchestrator.why(run)}

    def history(self, req: Request) -> list[dict[str, Any]]:
        authorize("read", req.caller, req.role)
        return [event_view(e) for e in self.store.events(_run_id(req.params))]

    def audit_log(self, req: Request) -> list[dict[str, Any]]:
        authorize("read", req.caller, req.role)
        limit = req.params.get("limit", 200)
        if not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise InvalidInput("params.limit must be an integer from 1 to 10000")
        return [audit_view(a) for a in self.store.audit_log(limit=limit)]

    def logs(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        params = req.params
        run = self.store.get(_run_id(params))
        stream = params.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise InvalidInput("params.stream must be 'stdout' or 'stderr'")
        offset = params.get("offset", 0)
        max_bytes = params.get("max_bytes", 65536)
        if not isinstance(offset, int) or not isinstance(max_bytes, int):
            raise InvalidInput("params.offset and params.max_bytes must be integers")
        max_bytes = max(1, min(max_bytes, MAX_LOG_CHUNK_BYTES))
        rundir = RunDir(Path(run.run_dir)) if run.run_dir else None
        path = None if rundir is None else rundir.stdout if stream == "stdout" else rundir.stderr
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

    def quota_show(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        quotas = self.orchestrator.quotas()
        active = self.orchestrator.active_jobs()
        return quota_view(quotas, active, self.orchestrator.usage)

    # --- changing ---------------------------------------------------------------------------

    def submit(self, req: Request) -> dict[str, Any]:
        from hpcops.spec import parse_spec

        authorize("submit", req.caller, req.role)
        specs = req.params.get("specs")
        if not isinstance(specs, list) or not specs:
            raise InvalidInput("params.specs must be a non-empty list of {yaml, source}")
        if len(specs) > MAX_SPECS_PER_SUBMIT:
            raise InvalidInput(f"at most {MAX_SPECS_PER_SUBMIT} specs per request")
        pairs = [(_str(s, "yaml"), _str(s, "source")) for s in specs]
        for text, source in pairs:
            check_priority(parse_spec(text, source).priority, req.role, self.access)
        runs = self.orchestrator.enqueue(pairs, req.caller)
        for run in runs:
            self._audit(
                req.caller,
                req.role,
                "submit",
                f"run {run.id}",
                allowed=True,
                after=f"{run.state} priority {run.priority}",
            )
        return {"runs": [{"id": r.id, "name": r.name, "state": r.state} for r in runs]}

    def rerun(self, req: Request) -> dict[str, Any]:
        """Queue a run again from its record (hpcops/tracking): params.run is an hpcops run id
        or an MLflow run id, params.set the `--set` overrides {"params.lr": "0.01"}."""
        from hpcops.tracking.rerun import check_key

        authorize("submit", req.caller, req.role)
        source = req.params.get("run")
        if isinstance(source, bool) or not isinstance(source, int | str):
            raise InvalidInput(f"params.run must be a run id or an MLflow run id, not {source!r}")
        if isinstance(source, int) and source < 1:
            raise InvalidInput(f"a run id is a positive integer, not {source}")
        overrides = req.params.get("set", {})
        if not isinstance(overrides, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()
        ):
            raise InvalidInput('params.set must map keys to text, e.g. {"params.lr": "0.01"}')
        for key in overrides:
            check_key(key)
        run = self.orchestrator.rerun(
            source,
            overrides,
            req.caller,
            check=lambda spec: check_priority(spec.priority, req.role, self.access),
        )
        self._audit(
            req.caller,
            req.role,
            "rerun",
            f"run {run.id}",
            allowed=True,
            after=f"{run.state} priority {run.priority}",
            detail=f"rerun of {source}"
            + (f" with {', '.join(f'{k}={v}' for k, v in overrides.items())}" if overrides else ""),
        )
        return {
            "id": run.id,
            "name": run.name,
            "state": run.state,
            "rerun_of": source,
            "rerun_of_mlflow": run.rerun_of_mlflow,
        }

    def cancel(self, req: Request) -> dict[str, Any]:
        run = self._run_for(req, "cancel")
        assert run.id is not None
        updated, message = self.orchestrator.cancel(run.id, req.caller)
        self._audit(
            req.caller,
            req.role,
            "cancel",
            f"run {run.id}",
            allowed=True,
            before=run.state,
            after=updated.state,
            detail=message,
        )
        return {"id": updated.id, "state": updated.state, "message": message}

    def _change_run(
        self,
        req: Request,
        action: str,
        apply: Callable[[Run], Run],
        field: str,
        message: Callable[[Run, Run], str],
    ) -> dict[str, Any]:
        """Authorize, apply, audit (before and after of `field`), answer."""
        run = self._run_for(req, action)
        updated = apply(run)
        before, after = getattr(run, field), getattr(updated, field)
        self._audit(
            req.caller, req.role, action, f"run {run.id}", allowed=True, before=before, after=after
        )
        return {"id": run.id, field: after, "message": message(run, updated)}

    def priority(self, req: Request) -> dict[str, Any]:
        value = req.params.get("priority")
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"a priority is an integer, not {value!r}")
        check_priority(value, req.role, self.access)
        self._lead_decision_guard(req, self._run_for(req, "priority"), "priority")

        def message(run: Run, updated: Run) -> str:
            note = (
                ""
                if run.state in ("QUEUED", "HELD")
                else (f" (run {run.id} is already {run.state}: priority orders hpcops' queue only)")
            )
            return f"run {run.id}: priority {run.priority} -> {updated.priority}{note}"

        return self._change_run(
            req,
            "priority",
            lambda run: self.orchestrator.set_priority(_id(run), value, req.caller),
            "priority",
            message,
        )

    def hold(self, req: Request) -> dict[str, Any]:
        return self._change_run(
            req,
            "hold",
            lambda run: self.orchestrator.hold(_id(run), req.caller),
            "state",
            lambda run, _: f"run {run.id} held",
        )

    def _lead_decision_guard(self, req: Request, run: Run, action: str) -> None:
        """A member may not undo what a lead decided about their run."""
        if req.role in LEADS:
            return
        if action == "release" and run.held_by and run.held_by != run.owner:
            raise PermissionDenied(
                f"run {run.id} was held by {run.held_by}; only a group lead may release it"
            )
        low, high = self.access.member_priority_min, self.access.member_priority_max
        if action == "priority" and not low <= run.priority <= high:
            raise PermissionDenied(
                f"run {run.id}'s priority {run.priority} was set by a group lead (outside the "
                f"member range {low} to {high}); only a lead may change it"
            )

    def release(self, req: Request) -> dict[str, Any]:
        self._lead_decision_guard(req, self._run_for(req, "release"), "release")
        return self._change_run(
            req,
            "release",
            lambda run: self.orchestrator.release_hold(_id(run), req.caller),
            "state",
            lambda run, _: f"run {run.id} released",
        )

    def top(self, req: Request) -> dict[str, Any]:
        return self._change_run(
            req,
            "top",
            lambda run: self.orchestrator.top(_id(run), req.caller),
            "priority",
            lambda run, updated: f"run {run.id} goes next (priority {updated.priority})",
        )

    def quota_set(self, req: Request) -> dict[str, Any]:
        authorize("quota", req.caller, req.role)
        scope = _str(req.params, "scope")
        resource = _str(req.params, "resource")
        value = req.params.get("value")
        _check_quota(scope, resource, value)
        before = self.store.set_quota(
            QuotaOverride(
                scope=scope,
                resource=resource,
                value=value,
                set_by=req.caller.name,
                set_at=time.time(),
            )
        )
        self.orchestrator.changed()  # a new quota changes what may be released
        old = "config" if before is None else before.value
        self._audit(
            req.caller,
            req.role,
            "quota_set",
            f"quota {scope}.{resource}",
            allowed=True,
            before=old,
            after=value,
        )
        shown = "unlimited" if value is None else value
        return {
            "scope": scope,
            "resource": resource,
            "value": value,
            "message": f"quota {scope}.{resource} = {shown}",
        }


WAITING = {RunState.QUEUED, RunState.HELD, RunState.PENDING, RunState.SUBMITTING}


def _queue_order(runs: list[Run], decision: Any) -> list[Run]:
    """In Slurm first (running, then pending), then queued in release order, then held, then
    ended (newest first, as given)."""
    position = {run_id: i for i, run_id in enumerate(decision.order)} if decision else {}
    rank = {"RUNNING": 0, "SUBMITTING": 1, "PENDING": 1, "STAGING": 1, "QUEUED": 2, "HELD": 3}

    def key(item: tuple[int, Run]) -> tuple[int, int, int]:
        index, run = item
        group = rank.get(run.state, 4)
        within = position.get(run.id or 0, len(position)) if group == 2 else index
        return (group, within, index)

    return [run for _, run in sorted(enumerate(runs), key=key)]


_SCOPE = re.compile(
    r"^(lab|per_user|user:[a-z_][a-z0-9_.-]{0,31}|partition:[A-Za-z0-9][A-Za-z0-9._-]{0,63})$"
)


def _check_quota(scope: str, resource: str, value: Any) -> None:
    if not _SCOPE.fullmatch(scope):
        raise InvalidInput(
            f"quota scope {scope!r} is not one of: lab, per_user, user:NAME, partition:NAME"
        )
    if resource not in ("jobs", "cpus", "gpus"):
        raise InvalidInput(f"quota resource {resource!r} is not one of: jobs, cpus, gpus")
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000_000
    ):
        raise InvalidInput(
            f"a quota is a whole number from 0 to 10000000, or null for unlimited; not {value!r}"
        )


def _target(message: dict[str, Any]) -> str:
    params = message.get("params")
    if isinstance(params, dict):
        if "run" in params:
            return f"run {params['run']!r}"
        if "scope" in params:
            return f"quota {params.get('scope')!r}.{params.get('resource')!r}"
    return str(message.get("method"))


def _id(run: Run) -> int:
    assert run.id is not None  # runs read from the store always have one
    return run.id


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
