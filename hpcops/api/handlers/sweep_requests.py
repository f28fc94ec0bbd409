"""The requests on a run (`cancel`, `priority`, `hold`, `release`, `top`, `retry`) on a sweep
(`"run": "s7"`), for hpcops/api/handlers/queue.py.

A request on a sweep is the same request on each of its points for which it makes sense,
through the same engine method, authorized and audited per point as for a run: cancel the
points that have not ended, hold and top the QUEUED ones, release the HELD ones, priority the
QUEUED and HELD ones, retry the ended ones that did not complete (of each point's latest run).
A point another member owns (a lead's rerun of it) or that left the state meanwhile is skipped,
and the answer says so. A sweep's points change in one engine batch: release sees every point
changed, or none yet.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from hpcops.access import authorize
from hpcops.api.handlers.base import Daemon, Request, lead_decision_guard, run_id
from hpcops.api.params import SweepId
from hpcops.errors import HpcopsError, PermissionDenied
from hpcops.states import RETRYABLE_STATES, TERMINAL_STATES, RunState
from hpcops.store import Run, Sweep

_NOT_ENDED = frozenset(RunState) - TERMINAL_STATES
_QUEUED = frozenset({RunState.QUEUED})
_HELD = frozenset({RunState.HELD})


class SweepRequests:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.access = daemon.config.access

    def cancel(self, req: Request, target: SweepId) -> dict[str, Any]:
        return self._on_sweep(
            req,
            target,
            "cancel",
            _NOT_ENDED,
            lambda run: self.daemon.engine.cancel(run_id(run), req.caller)[0],
            "state",
        )

    def priority(self, req: Request, target: SweepId, value: int) -> dict[str, Any]:
        return self._on_sweep(
            req,
            target,
            "priority",
            _QUEUED | _HELD,
            lambda run: self.daemon.engine.set_priority(run_id(run), value, req.caller),
            "priority",
        )

    def hold(self, req: Request, target: SweepId) -> dict[str, Any]:
        return self._on_sweep(
            req,
            target,
            "hold",
            _QUEUED,
            lambda run: self.daemon.engine.hold(run_id(run), req.caller),
            "state",
        )

    def release(self, req: Request, target: SweepId) -> dict[str, Any]:
        return self._on_sweep(
            req,
            target,
            "release",
            _HELD,
            lambda run: self.daemon.engine.release_hold(run_id(run), req.caller),
            "state",
        )

    def top(self, req: Request, target: SweepId) -> dict[str, Any]:
        """The sweep goes next: its first queued point is topped (engine.top), and the others
        get the same priority, so they keep their order among themselves."""
        engine = self.daemon.engine
        new_priority: list[int] = []

        def apply(run: Run) -> Run:
            if not new_priority:
                updated = engine.top(run_id(run), req.caller)
                new_priority.append(updated.priority)
                return updated
            note = (
                f"moved to the top by {req.caller.name} with sweep {target}: "
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

    def _on_sweep(
        self,
        req: Request,
        target: SweepId,
        action: str,
        states: Collection[RunState],
        apply: Callable[[Run], Run],
        field: str,
        *,
        latest_only: bool = False,
    ) -> dict[str, Any]:
        """`action` on every run of the sweep in `states` (`latest_only`: of each point's
        latest run): authorized on the sweep (a member's own, a lead's any), then applied,
        guarded and audited per point as for one run."""
        store = self.daemon.store
        sweep = store.get_sweep(target.number)
        authorize(action, req.caller, req.role, owner=sweep.owner, thing="sweep")
        runs = store.sweep_runs(target.number)
        if latest_only:
            runs = list({r.sweep_index: r for r in runs}.values())  # by index, the latest last
        chosen = [r for r in runs if RunState(r.state) in states]
        changed: list[tuple[Run, Run]] = []
        skipped: list[dict[str, Any]] = []
        with self.daemon.engine.batch():  # release sees every point changed, or none yet
            for run in chosen:
                self._on_point(req, target, action, run, apply, field, changed, skipped)
        return {
            "id": str(target),
            "sweep_id": target.number,
            "affected": [run.id for run, _ in changed],
            "skipped": skipped,
            "message": sweep_message(sweep, action, changed, skipped, len(runs) - len(chosen)),
        }

    def _on_point(
        self,
        req: Request,
        target: SweepId,
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
                    detail=f"{exc.message} (sweep {target})",
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
            detail=f"sweep {target}",
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
    sweep: Sweep,
    action: str,
    changed: Sequence[tuple[Run, Run]],
    skipped: Sequence[dict[str, Any]],
    others: int,
) -> str:
    """`sweep s7: 5 points held (4 not QUEUED)`; a cancel tells ended from being cancelled."""
    ref = f"sweep s{sweep.id}"
    if action == "cancel":
        now = sum(1 for _, new in changed if new.state == RunState.CANCELLED.value)
        parts = [f"{now} point{_s(now)} cancelled"]
        if len(changed) - now:
            parts.append(f"{len(changed) - now} being cancelled in Slurm")
        text = f"{ref}: {', '.join(parts)}"
    elif action in ("priority", "top") and changed:
        text = f"{ref}: {len(changed)} point{_s(len(changed))} {_DONE[action]} " + (
            f"(priority {changed[0][1].priority})"
        )
    else:
        text = f"{ref}: {len(changed)} point{_s(len(changed))} {_DONE[action]}"
    notes = []
    if others:
        notes.append(f"{others} {_WHICH[action]}")
    if skipped:
        first = skipped[0]
        notes.append(f"{len(skipped)} skipped (run {first['id']}: {first['reason']})")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _s(n: int) -> str:
    return "" if n == 1 else "s"
