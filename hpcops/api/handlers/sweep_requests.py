"""The requests on a run (`cancel`, `priority`, `hold`, `release`, `top`, `retry`) on a sweep
(`"run": "s7"`) or a pipeline (`"run": "p3"`), for hpcops/api/handlers/queue.py.

A request on a sweep is the same request on each of its points for which it makes sense,
through the same engine method, authorized and audited per point as for a run: cancel the
points that have not ended, hold and top the QUEUED ones, release the HELD ones, priority the
QUEUED and HELD ones, retry the ended ones that did not complete (of each point's latest run).
A point another member owns (a lead's rerun of it) or that left the state meanwhile is skipped,
and the answer says so. A sweep's points change in one engine batch: release sees every point
changed, or none yet.

A request on a pipeline is the same, over the current runs of its steps (engine.pipeline_runs:
a step that waits for others has its runs QUEUED already, so a hold or a priority reaches it
too); a cancel also ends its register steps that have not run (engine.cancel_pipeline_steps),
after which the tick ends every step still waiting. A pipeline is not retried: its steps are
rerun (`hpcops rerun p3.train --downstream`, hpcops/api/handlers/pipelines.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from hpcops.access import authorize
from hpcops.api.handlers.base import Daemon, Request, lead_decision_guard, run_id
from hpcops.api.params import PipelineId, SweepId
from hpcops.errors import HpcopsError, PermissionDenied
from hpcops.states import RETRYABLE_STATES, TERMINAL_STATES, RunState
from hpcops.store import Run

_NOT_ENDED = frozenset(RunState) - TERMINAL_STATES
_QUEUED = frozenset({RunState.QUEUED})
_HELD = frozenset({RunState.HELD})


Many = SweepId | PipelineId


@dataclass(frozen=True)
class Group:
    """A sweep or a pipeline, as a request on it sees it: whose it is, and its runs."""

    ref: str  # "s7", "p3"
    thing: str  # "sweep", "pipeline"
    unit: str  # what its runs are to users: a sweep's "point", a pipeline's "run"
    owner: str
    runs: list[Run]


class SweepRequests:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.access = daemon.config.access

    def cancel(self, req: Request, target: Many) -> dict[str, Any]:
        engine = self.daemon.engine
        ended: list[str] = []

        def also() -> None:
            """A pipeline's register steps that have not run end too (audited per step)."""
            if not isinstance(target, PipelineId):
                return
            ended.extend(engine.cancel_pipeline_steps(target.number, req.caller))
            for step in ended:
                self.daemon.audit(
                    req.caller,
                    req.role,
                    "cancel",
                    f"pipeline {target} step {step}",
                    allowed=True,
                    after=RunState.CANCELLED.value,
                    detail=f"pipeline {target}",
                )

        answer = self._on_sweep(
            req,
            target,
            "cancel",
            _NOT_ENDED,
            lambda run: engine.cancel(run_id(run), req.caller)[0],
            "state",
            also=also,
        )
        if isinstance(target, PipelineId):
            answer["steps_cancelled"] = ended
            if ended:
                answer["message"] += f"; register step{_s(len(ended))} {', '.join(ended)} cancelled"
        return answer

    def priority(self, req: Request, target: Many, value: int) -> dict[str, Any]:
        return self._on_sweep(
            req,
            target,
            "priority",
            _QUEUED | _HELD,
            lambda run: self.daemon.engine.set_priority(run_id(run), value, req.caller),
            "priority",
        )

    def hold(self, req: Request, target: Many) -> dict[str, Any]:
        return self._on_sweep(
            req,
            target,
            "hold",
            _QUEUED,
            lambda run: self.daemon.engine.hold(run_id(run), req.caller),
            "state",
        )

    def release(self, req: Request, target: Many) -> dict[str, Any]:
        return self._on_sweep(
            req,
            target,
            "release",
            _HELD,
            lambda run: self.daemon.engine.release_hold(run_id(run), req.caller),
            "state",
        )

    def top(self, req: Request, target: Many) -> dict[str, Any]:
        """The sweep (the pipeline) goes next: its first queued run is topped (engine.top), and
        the others get the same priority, so they keep their order among themselves."""
        engine = self.daemon.engine
        new_priority: list[int] = []

        def apply(run: Run) -> Run:
            if not new_priority:
                updated = engine.top(run_id(run), req.caller)
                new_priority.append(updated.priority)
                return updated
            note = (
                f"moved to the top by {req.caller.name} with {_thing(target)} {target}: "
                f"priority {run.priority} -> {new_priority[0]}"
            )
            return engine.set_priority(run_id(run), new_priority[0], req.caller, note)

        return self._on_sweep(req, target, "top", _QUEUED, apply, "priority")

    def retry(self, req: Request, target: SweepId) -> dict[str, Any]:
        """Each point's latest run that ended otherwise than COMPLETED."""
        engine = self.daemon.engine
        return self._on_sweep(
            req,
            target,
            "retry",
            RETRYABLE_STATES,
            lambda run: engine.retry(run_id(run), req.caller),
            "state",
            latest_only=True,
        )

    def _group(self, target: Many) -> Group:
        store = self.daemon.store
        if isinstance(target, PipelineId):
            pipeline = store.get_pipeline(target.number)
            runs = self.daemon.engine.pipeline_runs(target.number)
            return Group(str(target), "pipeline", "run", pipeline.owner, runs)
        sweep = store.get_sweep(target.number)
        return Group(str(target), "sweep", "point", sweep.owner, store.sweep_runs(target.number))

    def _on_sweep(
        self,
        req: Request,
        target: Many,
        action: str,
        states: Collection[RunState],
        apply: Callable[[Run], Run],
        field: str,
        *,
        latest_only: bool = False,
        also: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """`action` on every run of the sweep or pipeline in `states` (`latest_only`: of each
        point's latest run): authorized on the whole (a member's own, a lead's any), then
        applied, guarded and audited per run as for one run; then `also`, in the same batch."""
        group = self._group(target)
        authorize(action, req.caller, req.role, owner=group.owner, thing=group.thing)
        runs = group.runs
        if latest_only:
            runs = list({r.sweep_index: r for r in runs}.values())  # by index, the latest last
        chosen = [r for r in runs if RunState(r.state) in states]
        changed: list[tuple[Run, Run]] = []
        skipped: list[dict[str, Any]] = []
        with self.daemon.engine.batch():  # release sees every run changed, or none yet
            for run in chosen:
                self._on_point(req, group, action, run, apply, field, changed, skipped)
            if also is not None:
                also()
        key = "pipeline_id" if isinstance(target, PipelineId) else "sweep_id"
        return {
            "id": str(target),
            key: target.number,
            "affected": [run.id for run, _ in changed],
            "skipped": skipped,
            "message": sweep_message(group, action, changed, skipped, len(runs) - len(chosen)),
        }

    def _on_point(
        self,
        req: Request,
        group: Group,
        action: str,
        run: Run,
        apply: Callable[[Run], Run],
        field: str,
        changed: list[tuple[Run, Run]],
        skipped: list[dict[str, Any]],
    ) -> None:
        """One point of `_on_sweep`: applied and audited, or skipped with the reason."""
        try:
            authorize(action, req.caller, req.role, owner=run.owner)
            if action in ("priority", "release"):
                lead_decision_guard(req, run, action, self.access)
            updated = apply(run)
        except HpcopsError as exc:  # refused for this point, or it moved meanwhile
            skipped.append({"id": run.id, "reason": exc.message})
            if isinstance(exc, PermissionDenied):
                self.daemon.audit(
                    req.caller,
                    req.role,
                    action,
                    f"run {run.id}",
                    allowed=False,
                    detail=f"{exc.message} ({group.thing} {group.ref})",
                )
            return
        self.daemon.audit(
            req.caller,
            req.role,
            action,
            f"run {run.id}",
            allowed=True,
            before=getattr(run, field),
            after=getattr(updated, field),
            detail=f"{group.thing} {group.ref}",
        )
        changed.append((run, updated))


_DONE = {
    "cancel": "cancelled",
    "hold": "held",
    "release": "released",
    "priority": "given priority",
    "top": "moved to the top",
    "retry": "queued again",
}
_WHICH = {
    "cancel": "had ended",
    "hold": "not QUEUED",
    "release": "not HELD",
    "priority": "not QUEUED or HELD",
    "top": "not QUEUED",
    "retry": "completed or not ended",
}


def sweep_message(
    group: Group,
    action: str,
    changed: Sequence[tuple[Run, Run]],
    skipped: Sequence[dict[str, Any]],
    others: int,
) -> str:
    """`sweep s7: 5 points held (4 not QUEUED)`, `pipeline p3: 2 runs held`; a cancel tells
    ended from being cancelled."""
    ref, unit = f"{group.thing} {group.ref}", group.unit
    if action == "cancel":
        now = sum(1 for _, new in changed if new.state == RunState.CANCELLED.value)
        parts = [f"{now} {unit}{_s(now)} cancelled"]
        if len(changed) - now:
            parts.append(f"{len(changed) - now} being cancelled in Slurm")
        text = f"{ref}: {', '.join(parts)}"
    elif action in ("priority", "top") and changed:
        text = f"{ref}: {len(changed)} {unit}{_s(len(changed))} {_DONE[action]} " + (
            f"(priority {changed[0][1].priority})"
        )
    else:
        text = f"{ref}: {len(changed)} {unit}{_s(len(changed))} {_DONE[action]}"
    notes = []
    if others:
        notes.append(f"{others} {_WHICH[action]}")
    if skipped:
        first = skipped[0]
        notes.append(f"{len(skipped)} skipped (run {first['id']}: {first['reason']})")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _thing(target: Many) -> str:
    return "pipeline" if isinstance(target, PipelineId) else "sweep"
