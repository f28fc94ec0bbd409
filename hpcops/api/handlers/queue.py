"""Changing the lab's queue: `submit`, `validate`, `rerun`, and the requests on a run (`cancel`,
`priority`, `hold`, `release`, `top`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpcops.access import LEADS, authorize, check_priority
from hpcops.api.handlers.base import Daemon, Handler, Request, run_id
from hpcops.api.params import (
    PriorityParams,
    RerunParams,
    RunParams,
    SubmitParams,
    ValidateParams,
)
from hpcops.errors import PermissionDenied
from hpcops.store import Run


class QueueHandlers:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.access = daemon.config.access

    def methods(self) -> dict[str, Handler]:
        return {
            "submit": self.submit,
            "validate": self.validate,
            "rerun": self.rerun,
            "cancel": self.cancel,
            "priority": self.priority,
            "hold": self.hold,
            "release": self.release,
            "top": self.top,
        }

    # --- new runs ---------------------------------------------------------------------------

    def submit(self, req: Request) -> dict[str, Any]:
        """Queue every spec, or none. Each spec is parsed here, once; the engine takes the
        parsed Spec (and the shipment of its code) from here on."""
        from hpcops.spec import parse_spec

        authorize("submit", req.caller, req.role)
        items = SubmitParams.parse(req.params).specs
        specs = [(parse_spec(item.yaml, item.source), item.source) for item in items]
        for spec, _source in specs:
            check_priority(spec.priority, req.role, self.access)
        shipments = [item.code.shipment() if item.code else None for item in items]
        runs = self.daemon.engine.enqueue(specs, req.caller, shipments)
        for run in runs:
            self.daemon.audit(
                req.caller,
                req.role,
                "submit",
                f"run {run.id}",
                allowed=True,
                after=f"{run.state} priority {run.priority}",
            )
        return {"runs": [{"id": r.id, "name": r.name, "state": r.state} for r in runs]}

    def validate(self, req: Request) -> dict[str, Any]:
        """What `submit` would say about a spec, without queueing it (parsed once, here)."""
        from hpcops.spec import parse_spec

        authorize("submit", req.caller, req.role)
        params = ValidateParams.parse(req.params)
        spec = parse_spec(params.yaml, params.source)
        self.daemon.engine.check_spec(spec, params.source)
        check_priority(spec.priority, req.role, self.access)
        return {"valid": True, "name": spec.name}

    def rerun(self, req: Request) -> dict[str, Any]:
        """Queue a run again from its record (hpcops/tracking): params.run is an hpcops run id
        or an MLflow run id, params.set the `--set` overrides {"params.lr": "0.01"}. The engine
        parses the recorded spec with the overrides applied, once."""
        from hpcops.tracking.rerun import check_key

        authorize("submit", req.caller, req.role)
        params = RerunParams.parse(req.params)
        source, overrides = params.run, params.overrides
        for key in overrides:
            check_key(key)
        run = self.daemon.engine.rerun(
            source,
            overrides,
            req.caller,
            check=lambda spec: check_priority(spec.priority, req.role, self.access),
        )
        self.daemon.audit(
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

    # --- requests on a run ------------------------------------------------------------------

    def cancel(self, req: Request) -> dict[str, Any]:
        run = self.daemon.run_for(req, RunParams.parse(req.params).run, "cancel")
        updated, message = self.daemon.engine.cancel(run_id(run), req.caller)
        self.daemon.audit(
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

    def priority(self, req: Request) -> dict[str, Any]:
        params = PriorityParams.parse(req.params)
        value = params.priority
        check_priority(value, req.role, self.access)
        self._lead_decision_guard(req, self.daemon.run_for(req, params.run, "priority"), "priority")

        def message(run: Run, updated: Run) -> str:
            note = (
                ""
                if run.state in ("QUEUED", "HELD")
                else (f" (run {run.id} is already {run.state}: priority orders hpcops' queue only)")
            )
            return f"run {run.id}: priority {run.priority} -> {updated.priority}{note}"

        return self._change_run(
            req,
            params.run,
            "priority",
            lambda run: self.daemon.engine.set_priority(run_id(run), value, req.caller),
            "priority",
            message,
        )

    def hold(self, req: Request) -> dict[str, Any]:
        return self._change_run(
            req,
            RunParams.parse(req.params).run,
            "hold",
            lambda run: self.daemon.engine.hold(run_id(run), req.caller),
            "state",
            lambda run, _: f"run {run.id} held",
        )

    def release(self, req: Request) -> dict[str, Any]:
        target = RunParams.parse(req.params).run
        self._lead_decision_guard(req, self.daemon.run_for(req, target, "release"), "release")
        return self._change_run(
            req,
            target,
            "release",
            lambda run: self.daemon.engine.release_hold(run_id(run), req.caller),
            "state",
            lambda run, _: f"run {run.id} released",
        )

    def top(self, req: Request) -> dict[str, Any]:
        return self._change_run(
            req,
            RunParams.parse(req.params).run,
            "top",
            lambda run: self.daemon.engine.top(run_id(run), req.caller),
            "priority",
            lambda run, updated: f"run {run.id} goes next (priority {updated.priority})",
        )

    def _change_run(
        self,
        req: Request,
        target: int,
        action: str,
        apply: Callable[[Run], Run],
        field: str,
        message: Callable[[Run, Run], str],
    ) -> dict[str, Any]:
        """Authorize, apply, audit (before and after of `field`), answer."""
        run = self.daemon.run_for(req, target, action)
        updated = apply(run)
        before, after = getattr(run, field), getattr(updated, field)
        self.daemon.audit(
            req.caller, req.role, action, f"run {run.id}", allowed=True, before=before, after=after
        )
        return {"id": run.id, field: after, "message": message(run, updated)}

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
