"""What every handler shares: the request, the engine as the API sees it, the daemon's
collaborators, and the audit log.

Handlers are plain methods taking a Request and returning JSON data. Each checks the caller's
role first (access.authorize), parses its params with its model (api/params.py), and audits
every change it makes; the server audits refusals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hpcops.access import LEADS, Caller, Role, authorize
from hpcops.config import Config
from hpcops.config_sections import AccessConfig
from hpcops.describe import clip
from hpcops.errors import HpcopsError, PermissionDenied
from hpcops.store import Audit, Pipeline, Run, Store, Sweep

if TYPE_CHECKING:
    from hpcops import policy
    from hpcops.code.mirror import CodeMirror, Shipment
    from hpcops.data.cache import ContentCache
    from hpcops.engine import EngineStatus
    from hpcops.pipeline import Pipeline as LoadedPipeline
    from hpcops.scheduling.service import ScheduleService
    from hpcops.spec import Spec
    from hpcops.states import RunState
    from hpcops.tracking.worker import Tracker
    from hpcops.transport.base import Transport


_AUDIT_NAME_CHARS = 64
_AUDIT_TARGET_CHARS = 200
_AUDIT_VALUE_CHARS = 2000


@dataclass(frozen=True)
class Request:
    caller: Caller
    role: Role
    params: dict[str, Any]


Handler = Callable[[Request], Any]


class Engine(Protocol):
    """The engine's methods the API calls (PLAN contract 2), and nothing else: the API reads
    no attribute of the engine. `hpcops.engine.Engine` is the real one; a test may fake it."""

    def status(self) -> EngineStatus: ...
    def check_spec(self, spec: Spec, source: str) -> None: ...
    def enqueue(
        self,
        specs: Sequence[tuple[Spec, str]],
        caller: Caller,
        shipments: Sequence[Shipment | None] | None = None,
    ) -> list[Run]: ...
    def cancel(self, run_id: int, caller: Caller) -> tuple[Run, str]: ...
    def set_priority(self, run_id: int, priority: int, caller: Caller, note: str = "") -> Run: ...
    def top(self, run_id: int, caller: Caller) -> Run: ...
    def hold(self, run_id: int, caller: Caller) -> Run: ...
    def release_hold(self, run_id: int, caller: Caller) -> Run: ...
    def retry(self, run_id: int, caller: Caller) -> Run: ...
    def rerun(
        self,
        source: int | str,
        overrides: dict[str, str],
        caller: Caller,
        check: Callable[[Spec], None] | None = None,
    ) -> Run: ...
    def rerun_sweep(self, sweep_id: int, caller: Caller) -> tuple[Sweep, list[Run]]: ...
    def enqueue_pipeline(
        self,
        loaded: LoadedPipeline,
        caller: Caller,
        shipments: Mapping[str, Shipment | None] | None = None,
    ) -> tuple[Pipeline, list[Run]]: ...
    def pipeline_runs(self, pipeline_id: int) -> list[Run]: ...
    def pipeline_step_states(self, pipeline_id: int) -> dict[str, RunState]: ...
    def cancel_pipeline_steps(self, pipeline_id: int, caller: Caller) -> list[str]: ...
    def rerun_step(
        self, pipeline_id: int, step: str, downstream: bool, caller: Caller
    ) -> list[Run]: ...
    def why(self, run: Run) -> str: ...
    def changed(self) -> None: ...
    def batch(self) -> AbstractContextManager[None]: ...
    def quotas(self) -> policy.Quotas: ...
    def active_jobs(self) -> list[policy.Active]: ...


@dataclass(frozen=True)
class Daemon:
    """The daemon's collaborators, as daemon.py built them; handlers read them from here, never
    from the engine."""

    engine: Engine
    store: Store
    config: Config
    home: Path
    files: Transport  # the run directories, where the jobs see them (local or over SSH)
    code_mirror: CodeMirror
    data_cache: ContentCache
    tracker: Tracker | None  # None: tracking is off
    schedules: ScheduleService | None  # None: started without schedules (tests)
    started_at: float
    daemon_uid: int

    def audit(
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
        later: list[Audit] | None = None,
    ) -> None:
        """Log one request's decision, in a transaction of its own; with `later`, add the row
        there instead, for the caller to write with others in one (a submit of 200 specs)."""
        # Every value here may come from a request (a refused one too, with a scope of
        # megabytes): each is cut to a bound, so the audit log grows by a bounded row per request.
        entry = Audit(
            at=time.time(),
            actor=clip(caller.name, _AUDIT_NAME_CHARS),
            role=role.value,
            action=clip(action, _AUDIT_NAME_CHARS),
            target=clip(target, _AUDIT_TARGET_CHARS),
            before=None if before is None else clip(str(before), _AUDIT_VALUE_CHARS),
            after=None if after is None else clip(str(after), _AUDIT_VALUE_CHARS),
            allowed=allowed,
            detail=clip(detail, _AUDIT_VALUE_CHARS),
        )
        if later is not None:
            later.append(entry)
        else:
            self.store.audit(entry)

    def run_for(self, req: Request, run_id: int, action: str) -> Run:
        """The run a request names, once the caller may do `action` to it."""
        run = self.store.get(run_id)
        authorize(action, req.caller, req.role, owner=run.owner)
        return run

    def schedule_service(self) -> ScheduleService:
        if self.schedules is None:
            raise HpcopsError("this daemon was started without schedules")
        return self.schedules


def run_id(run: Run) -> int:
    assert run.id is not None  # runs read from the store always have one
    return run.id


def lead_decision_guard(req: Request, run: Run, action: str, access: AccessConfig) -> None:
    """A member may not undo what a lead decided about their run."""
    if req.role in LEADS:
        return
    if action == "release" and run.held_by and run.held_by != run.owner:
        raise PermissionDenied(
            f"run {run.id} was held by {run.held_by}; only a group lead may release it"
        )
    low, high = access.member_priority_min, access.member_priority_max
    if action == "priority" and not low <= run.priority <= high:
        raise PermissionDenied(
            f"run {run.id}'s priority {run.priority} was set by a group lead (outside the "
            f"member range {low} to {high}); only a lead may change it"
        )
