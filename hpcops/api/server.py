"""The daemon's API on a Unix domain socket.

Who calls is read from the socket (SO_PEERCRED): the kernel's word, not the client's. The socket
lives in the daemon's home with mode 0600, so for now only the daemon's own account can connect.
"""

from __future__ import annotations

import json
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
from typing import TYPE_CHECKING, Any

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
from hpcops.api.views import (
    audit_view,
    event_view,
    firing_view,
    iso,
    quota_view,
    run_view,
    schedule_view,
)
from hpcops.code.git import GitError
from hpcops.code.mirror import BUNDLE_NAME_RE, MAX_HAVE_QUERY, Shipment
from hpcops.data.cache import CacheError
from hpcops.data.usage import VersionUse, plan_gc, version_uses
from hpcops.engine import Engine as Orchestrator
from hpcops.errors import (
    HpcopsError,
    InvalidInput,
    PermissionDenied,
    ProtocolError,
    SlurmUnreachable,
)
from hpcops.render import STAGING_LOG
from hpcops.rundir import STAGING_PROGRESS, RunDir
from hpcops.spec import FULL_COMMIT_RE
from hpcops.states import RunState
from hpcops.store import Audit, QuotaOverride, Run, Schedule, Store

if TYPE_CHECKING:
    from hpcops.scheduling.service import ScheduleService
from hpcops.transport.base import TransportError

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
_MUTATING = {
    "submit",
    "cancel",
    "priority",
    "hold",
    "release",
    "top",
    "quota_set",
    "cache_gc",
    "rerun",
    "schedule_add",
    "schedule_pause",
    "schedule_resume",
    "schedule_remove",
    "schedule_run_now",
}


class Api:
    """Request handlers: plain methods taking a Request, returning JSON data. Every method
    checks the caller's role first (access.authorize), and every change or refusal is audited."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        store: Store,
        *,
        started_at: float,
        daemon_uid: int,
        schedules: ScheduleService | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.store = store
        self.schedules = schedules
        self.started_at = started_at
        self.daemon_uid = daemon_uid
        self.access = orchestrator.config.access
        self.methods: dict[str, Callable[[Request], Any]] = {
            "ping": self.ping,
            "submit": self.submit,
            "code_have": self.code_have,
            "cache_ls": self.cache_ls,
            "cache_gc": self.cache_gc,
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
            "schedule_add": self.schedule_add,
            "schedule_list": self.schedule_list,
            "schedule_show": self.schedule_show,
            "schedule_pause": self.schedule_pause,
            "schedule_resume": self.schedule_resume,
            "schedule_remove": self.schedule_remove,
            "schedule_run_now": self.schedule_run_now,
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
        health = self.orchestrator.status().health
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
                "last_poll_at": iso(self.orchestrator.status().last_poll_at),
                "transport": self.orchestrator.files.kind,
                "ssh_connections_opened": self.orchestrator.files.connections_opened,
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
        runs = _queue_order(runs, self.orchestrator.status().decision)
        return [self._view(r) for r in runs]

    def _view(self, run: Run, *, detail: bool = False) -> dict[str, Any]:
        view = run_view(run, detail=detail)
        view["wait_reason"] = self.orchestrator.why(run) if RunState(run.state) in WAITING else None
        return view

    def show(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        run = self.store.get(_run_id(req.params))
        view = self._view(run, detail=True)
        view["staging"] = self._staging_progress(run) if run.data_json else None
        view["schedule_name"] = (
            self.store.get_schedule(run.schedule_id).name if run.schedule_id else None
        )
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
        if stream not in ("stdout", "stderr", "staging"):
            raise InvalidInput("params.stream must be 'stdout', 'stderr' or 'staging'")
        offset = params.get("offset", 0)
        max_bytes = params.get("max_bytes", 65536)
        if not isinstance(offset, int) or not isinstance(max_bytes, int):
            raise InvalidInput("params.offset and params.max_bytes must be integers")
        max_bytes = max(1, min(max_bytes, MAX_LOG_CHUNK_BYTES))
        rundir = RunDir(Path(run.run_dir)) if run.run_dir else None
        paths = (
            {"stdout": rundir.stdout, "stderr": rundir.stderr, "staging": rundir.path / STAGING_LOG}
            if rundir is not None
            else {}
        )
        path = paths.get(stream)
        data, size, new_offset = b"", 0, max(offset, 0)
        if path is not None:
            try:
                # A negative offset asks for the last -offset bytes (tail). Off the cluster the
                # log is read over the daemon's open SSH connection.
                chunk = self.orchestrator.files.read_chunk(path, offset, max_bytes)
            except TransportError as exc:
                raise SlurmUnreachable(f"cannot read {path} on the cluster: {exc}") from None
            data, size, new_offset = chunk.data, chunk.size, chunk.start + len(chunk.data)
        # The staging log is complete once the run left STAGING (or never had a staging job).
        over = RunState(run.state).is_terminal or (
            stream == "staging" and run.state != RunState.STAGING.value
        )
        done = over and new_offset >= size
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
        return quota_view(quotas, active, self.orchestrator.status().usage)

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
        shipments = [_shipment(s.get("code")) for s in specs]
        for text, source in pairs:
            check_priority(parse_spec(text, source).priority, req.role, self.access)
        runs = self.orchestrator.enqueue(pairs, req.caller, shipments)
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

    def code_have(self, req: Request) -> dict[str, Any]:
        """Which of the submitter's commits the lab's mirror holds, and where to put a bundle."""
        authorize("submit", req.caller, req.role)
        commits = req.params.get("commits")
        if (
            not isinstance(commits, list)
            or len(commits) > MAX_HAVE_QUERY
            or not all(isinstance(c, str) and FULL_COMMIT_RE.fullmatch(c) for c in commits)
        ):
            raise InvalidInput(
                f"params.commits must be a list of at most {MAX_HAVE_QUERY} full commit ids"
            )
        mirror = self.orchestrator.code_mirror
        try:
            have = mirror.have(commits)
        except GitError as exc:
            raise InvalidInput(f"the lab's code mirror is not usable: {exc}") from None
        return {"have": sorted(have), "incoming": str(mirror.incoming)}

    def _staging_progress(self, run: Run) -> dict[str, Any] | None:
        """The stager's progress file ({"targets": {path: {phase, files_done, ...}}}), if any."""
        if not run.run_dir:
            return None
        try:
            path = Path(run.run_dir) / STAGING_PROGRESS
            chunk = self.orchestrator.files.read_chunk(path, 0, 256 * 1024)
            data = json.loads(chunk.data) if chunk.data else None
        except (TransportError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def cache_ls(self, req: Request) -> list[dict[str, Any]]:
        """The data versions the lab's runs used: size, last use, runs, whether in the cache."""
        authorize("read", req.caller, req.role)
        cache = self.orchestrator.data_cache
        uses = version_uses(self.store.list_runs())
        return [
            _version_view(use, cache.missing(use.md5))
            for use in sorted(uses.values(), key=lambda u: -u.last_used)
        ]

    def cache_gc(self, req: Request) -> dict[str, Any]:
        """Remove versions no queued or active run needs: unused for long, or over a size."""
        authorize("cache", req.caller, req.role)
        older = req.params.get("older_than_s")
        max_bytes = req.params.get("max_bytes")
        dry_run = req.params.get("dry_run", False)
        for name, value in (("older_than_s", older), ("max_bytes", max_bytes)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise InvalidInput(f"params.{name} must be a non-negative number or null")
        if older is None and max_bytes is None:
            raise InvalidInput("say what to remove: --older-than, --max-size, or both")
        if not isinstance(dry_run, bool):
            raise InvalidInput("params.dry_run must be true or false")
        cache = self.orchestrator.data_cache
        files = freed = 0
        if dry_run:
            uses = version_uses(self.store.list_runs())
            plan = plan_gc(uses, now=time.time(), older_than_s=older, max_bytes=max_bytes)
        else:
            # Alone in the cache (no stager at work), and the plan made inside: a run queued
            # a moment ago counts, and no stager is between its look and its copy.
            try:
                with cache.exclusive(wait_s=10.0):
                    uses = version_uses(self.store.list_runs())
                    plan = plan_gc(uses, now=time.time(), older_than_s=older, max_bytes=max_bytes)
                    keep: set[str] = set()
                    for md5 in plan.keep:
                        keep |= cache.objects_of(md5)
                    grace = self.orchestrator.config.data.gc_grace_s
                    files, freed = cache.remove_except(keep, min_age_s=grace)
            except CacheError as exc:
                raise HpcopsError(str(exc)) from None
            self._audit(
                req.caller,
                req.role,
                "cache_gc",
                "data cache",
                allowed=True,
                after=f"removed {len(plan.remove)} versions, {files} files, {freed} bytes",
            )
        return {
            "removed": [
                {"md5": md5, "reason": plan.reasons[md5], "paths": sorted(uses[md5].paths)}
                for md5 in plan.remove
            ],
            "kept": len(plan.keep),
            "files_removed": files,
            "bytes_freed": freed,
            "dry_run": dry_run,
        }

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

    # --- schedules --------------------------------------------------------------------------

    def _service(self) -> ScheduleService:
        if self.schedules is None:
            raise HpcopsError("this daemon was started without schedules")
        return self.schedules

    def _schedule_view(self, schedule: Schedule) -> dict[str, Any]:
        service = self._service()
        assert schedule.id is not None
        removed = schedule.removed_at is not None
        return schedule_view(
            schedule,
            next_fire_at=service.next_fire_times([schedule]).get(schedule.id),
            problem=None if removed else service.problem(schedule),
            last_firing=self.store.latest_firings().get(schedule.id),
        )

    def schedule_add(self, req: Request) -> dict[str, Any]:
        from hpcops.scheduling.service import ScheduleOptions
        from hpcops.spec import parse_spec

        authorize("submit", req.caller, req.role)
        params = req.params
        source = _str(params, "source")
        spec = parse_spec(_str(params, "yaml"), source)
        check_priority(spec.priority, req.role, self.access)
        options = ScheduleOptions(
            name=_optional(params, "name", str),
            cron=_optional(params, "cron", str),
            every_s=_optional(params, "every_s", int),
            timezone=_optional(params, "timezone", str),
            catch_up=_optional(params, "catch_up", str),
            catch_up_grace_s=_optional(params, "catch_up_grace_s", int),
            allow_overlap=_optional(params, "allow_overlap", bool),
            on_data_change=_optional(params, "on_data_change", bool),
            check_every_s=_optional(params, "check_every_s", int),
        )
        schedule = self._service().add(spec, source, options, req.caller)
        view = self._schedule_view(schedule)
        self._audit(
            req.caller,
            req.role,
            "schedule_add",
            f"schedule {schedule.id}",
            allowed=True,
            after=f"{view['cadence']} {schedule.name} (spec {schedule.spec_name})",
        )
        return view

    def schedule_list(self, req: Request) -> list[dict[str, Any]]:
        authorize("read", req.caller, req.role)
        include_removed = req.params.get("all", False)
        if not isinstance(include_removed, bool):
            raise InvalidInput("params.all must be true or false")
        service = self._service()
        schedules = self.store.schedules(include_removed=include_removed)
        next_times = service.next_fire_times(schedules)
        latest = self.store.latest_firings()
        return [
            schedule_view(
                s,
                next_fire_at=next_times.get(s.id or 0),
                # Checked now: a spec the cluster or the templates no longer accept shows up
                # here before its next firing fails.
                problem=None if s.removed_at is not None else service.problem(s),
                last_firing=latest.get(s.id or 0),
            )
            for s in schedules
        ]

    def schedule_show(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        schedule = self.store.find_schedule(_schedule_ref(req.params))
        limit = req.params.get("limit", 20)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise InvalidInput("params.limit must be an integer from 1 to 10000")
        assert schedule.id is not None
        view = self._schedule_view(schedule)
        view["spec"] = schedule.spec_yaml
        firings = self.store.firings(schedule.id, limit=limit)
        view["firings"] = [firing_view(f, state) for f, state in firings]
        return view

    def _change_schedule(
        self, req: Request, action: str, apply: Callable[[Schedule], tuple[Schedule, str]]
    ) -> dict[str, Any]:
        """Find, authorize (owner or lead), apply, audit (status before and after), answer."""
        schedule = self.store.find_schedule(_schedule_ref(req.params))
        authorize("schedule", req.caller, req.role, owner=schedule.owner, thing="schedule")
        if schedule.removed_at is not None:
            raise InvalidInput(
                f"schedule {schedule.id} ({schedule.name}) was removed by {schedule.removed_by}"
            )
        before = self._schedule_view(schedule)
        updated, message = apply(schedule)
        after = self._schedule_view(updated)
        self._audit(
            req.caller,
            req.role,
            action,
            f"schedule {schedule.id}",
            allowed=True,
            before=before["status"],
            after=after["status"],
            detail=message,
        )
        return {**after, "message": message}

    def schedule_pause(self, req: Request) -> dict[str, Any]:
        def pause(s: Schedule) -> tuple[Schedule, str]:
            return self._service().set_paused(s, True), f"schedule {s.id} ({s.name}) paused"

        return self._change_schedule(req, "schedule_pause", pause)

    def schedule_resume(self, req: Request) -> dict[str, Any]:
        def resume(s: Schedule) -> tuple[Schedule, str]:
            return (
                self._service().set_paused(s, False),
                f"schedule {s.id} ({s.name}) resumed; firings missed while paused are not made up",
            )

        return self._change_schedule(req, "schedule_resume", resume)

    def schedule_remove(self, req: Request) -> dict[str, Any]:
        def remove(s: Schedule) -> tuple[Schedule, str]:
            return (
                self._service().remove(s, req.caller),
                f"schedule {s.id} ({s.name}) removed; its runs and firings are kept",
            )

        return self._change_schedule(req, "schedule_remove", remove)

    def schedule_run_now(self, req: Request) -> dict[str, Any]:
        fired: list[dict[str, Any]] = []

        def run_now(s: Schedule) -> tuple[Schedule, str]:
            firing = self._service().run_now(s, req.caller)
            fired.append(firing_view(firing, None))
            if firing.outcome == "submitted":
                return s, f"schedule {s.id} ({s.name}): run {firing.run_id} queued"
            return s, f"schedule {s.id} ({s.name}): {firing.outcome}: {firing.reason}"

        result = self._change_schedule(req, "schedule_run_now", run_now)
        return {**result, "firing": fired[0]}


WAITING = {
    RunState.QUEUED,
    RunState.HELD,
    RunState.SUBMITTING,
    RunState.STAGING,
    RunState.PENDING,
}


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
        if "schedule" in params:
            return f"schedule {params['schedule']!r}"
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


def _version_view(use: VersionUse, missing: list[Any] | None) -> dict[str, Any]:
    return {
        "md5": use.md5,
        "paths": sorted(use.paths),
        "repos": sorted(use.repos),
        "size": use.size,
        "nfiles": use.nfiles,
        "runs": sorted(use.runs),
        "last_used": iso(use.last_used),
        "needed": use.needed,
        # complete: every object is in the cache; partial: some; absent: not even the manifest
        "in_cache": "absent" if missing is None else ("complete" if not missing else "partial"),
    }


def _shipment(value: Any) -> Shipment | None:
    """A submit request's per-spec `code`: {bundle, checkout, dirty}, each optional."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"bundle", "checkout", "dirty"}:
        raise InvalidInput("params.specs[].code must be an object with bundle, checkout, dirty")
    bundle, checkout, dirty = value.get("bundle"), value.get("checkout"), value.get("dirty", False)
    if bundle is not None and not (isinstance(bundle, str) and BUNDLE_NAME_RE.fullmatch(bundle)):
        raise InvalidInput(f"params.specs[].code.bundle: {bundle!r} is not a bundle name")
    if checkout is not None and not (
        isinstance(checkout, str) and FULL_COMMIT_RE.fullmatch(checkout)
    ):
        raise InvalidInput(f"params.specs[].code.checkout: {checkout!r} is not a full commit id")
    if not isinstance(dirty, bool):
        raise InvalidInput("params.specs[].code.dirty must be true or false")
    return Shipment(bundle=bundle, checkout=checkout, dirty=dirty)


def _optional(params: dict[str, Any], key: str, kind: type) -> Any:
    value = params.get(key)
    if value is None:
        return None
    # bool is an int in Python; an integer option must not take true/false, nor the reverse.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"params.{key} must be {kind.__name__}, not {value!r}")
    return value


def _schedule_ref(params: dict[str, Any]) -> int | str:
    """A schedule named by id (a positive integer) or by name."""
    value = params.get("schedule")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    if isinstance(value, str) and 1 <= len(value) <= 64:
        return value
    raise InvalidInput(f"a schedule is named by its id or its name, not {value!r}")


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
