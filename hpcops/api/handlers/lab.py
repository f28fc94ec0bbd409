"""The lab's daemon as a whole: `status` (ping), quotas, the audit log."""

from __future__ import annotations

import os
import time
from typing import Any

from hpcops import __version__
from hpcops.access import Role, authorize
from hpcops.api import protocol
from hpcops.api.handlers.base import Daemon, Handler, Request
from hpcops.api.params import AuditParams, NoParams, QuotaSetParams
from hpcops.api.views import audit_view, iso, quota_view
from hpcops.home import HomePaths
from hpcops.store import QuotaOverride


class LabHandlers:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def methods(self) -> dict[str, Handler]:
        return {
            "ping": self.ping,
            "quota_show": self.quota_show,
            "quota_set": self.quota_set,
            "audit": self.audit_log,
        }

    def ping(self, req: Request) -> dict[str, Any]:
        """Anyone who can connect may ping (outsiders see no run counts): `hpcops status`."""
        daemon = self.daemon
        status = daemon.engine.status()
        health = status.health
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "started_at": iso(daemon.started_at),
            "uptime_s": round(time.time() - daemon.started_at, 1),
            "caller": req.caller.name,
            "role": req.role.value,
            "lab": daemon.config.lab,
            "home": str(daemon.home),
            # Where a laptop's OpenSSH master forwards to (client/forward.py).
            "socket": str(HomePaths(daemon.home).socket.absolute()),
            "runs": daemon.store.counts_by_state() if req.role is not Role.OUTSIDER else {},
            "slurm": {
                "reachable": health.reachable,
                "unreachable_since": iso(health.since),
                "last_error": health.last_error or None,
                "last_poll_at": iso(status.last_poll_at),
                "transport": daemon.files.kind,
                "ssh_connections_opened": daemon.files.connections_opened,
            },
        }

    def quota_show(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        NoParams.parse(req.params)
        engine = self.daemon.engine
        return quota_view(engine.quotas(), engine.active_jobs(), engine.status().usage)

    def quota_set(self, req: Request) -> dict[str, Any]:
        authorize("quota", req.caller, req.role)
        params = QuotaSetParams.parse(req.params)
        scope, resource, value = params.scope, params.resource, params.value
        before = self.daemon.store.set_quota(
            QuotaOverride(
                scope=scope,
                resource=resource,
                value=value,
                set_by=req.caller.name,
                set_at=time.time(),
            )
        )
        self.daemon.engine.changed()  # a new quota changes what may be released
        old = "config" if before is None else before.value
        self.daemon.audit(
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

    def audit_log(self, req: Request) -> list[dict[str, Any]]:
        authorize("read", req.caller, req.role)
        limit = AuditParams.parse(req.params).limit
        return [audit_view(a) for a in self.daemon.store.audit_log(limit=limit)]
