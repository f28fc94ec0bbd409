"""Changing the lab's queue: `submit`, `validate`, `rerun`, and the requests on a run (`cancel`,
`priority`, `hold`, `release`, `top`, `retry`).

A request on a sweep (`"run": "s7"`) is the same request on each of its points for which it
makes sense, and on a pipeline (`"run": "p3"`) on each of its steps' runs
(hpcops/api/handlers/sweep_requests.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcops.access import authorize, check_priority
from hpcops.api.handlers.base import Daemon, Handler, Request, lead_decision_guard, run_id
from hpcops.api.handlers.sweep_requests import SweepRequests
from hpcops.api.params import (
    PipelineId,
    PriorityParams,
    RerunParams,
    SpecItem,
    SubmitParams,
    SweepId,
    TargetParams,
    ValidateParams,
)
from hpcops.api.sweeps import sweep_preview
from hpcops.api.views import sweep_ref
from hpcops.describe import id_ranges
from hpcops.errors import InvalidInput, NeedsFullPath
from hpcops.retries import attempt_number
from hpcops.states import RunState, why_not_retryable
from hpcops.store import Audit, Run, Sweep
from hpcops.yamlio import read_yaml

if TYPE_CHECKING:
    from hpcops.spec import Spec


class QueueHandlers:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.access = daemon.config.access
        self.sweeps = SweepRequests(daemon)

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
            "retry": self.retry,
        }

    # --- new runs ---------------------------------------------------------------------------

    def submit(self, req: Request) -> dict[str, Any]:
        """Queue every spec, or none. Each spec is parsed here, once; the engine takes the
        parsed Spec (and the shipment of its code) from here on."""
        authorize("submit", req.caller, req.role)
        items = SubmitParams.parse(req.params).specs
        specs, problems = [], []
        for item in items:
            try:
                specs.append((parse_file_text(item), item.source))
            except NeedsFullPath:
                raise  # the client's full path reads every spec again and names any problem
            except InvalidInput as exc:
                problems.append(exc.message)
        if problems:
            # Every spec's problems at once, in the words the CLI's full path uses.
            raise InvalidInput("\n".join(problems) + "\nnothing was queued")
        for spec, _source in specs:
            check_priority(spec.priority, req.role, self.access)
        shipments = [item.code.shipment() if item.code else None for item in items]
        runs = self.daemon.engine.enqueue(specs, req.caller, shipments)
        points: dict[int, list[Run]] = {}
        entries: list[Audit] = []  # written in one transaction (200 specs: one commit)
        for run in runs:
            if run.sweep_id is not None:
                points.setdefault(run.sweep_id, []).append(run)
                continue
            self.daemon.audit(
                req.caller,
                req.role,
                "submit",
                f"run {run.id}",
                allowed=True,
                after=f"{run.state} priority {run.priority}",
                later=entries,
            )
        sweeps = []
        rows = self.daemon.store.sweeps_by_ids(points)
        for number, its_runs in points.items():
            # One audit row per sweep: a 1,000-point sweep is one decision, not 1,000.
            first = its_runs[0]
            self.daemon.audit(
                req.caller,
                req.role,
                "submit",
                f"sweep s{number}",
                allowed=True,
                after=f"{len(its_runs)} points {first.state} priority {first.priority} "
                f"(runs {id_ranges(run_id(r) for r in its_runs)})",
                later=entries,
            )
            sweeps.append(
                {
                    "id": f"s{number}",
                    "sweep_id": number,
                    "name": rows[number].name if number in rows else first.name,
                    "n_points": len(its_runs),
                    "runs": [r.id for r in its_runs],
                }
            )
        self.daemon.store.audit(*entries)
        return {
            "runs": [
                {
                    "id": r.id,
                    "name": r.name,
                    "state": r.state,
                    "sweep": sweep_ref(r.sweep_id),
                    "sweep_index": r.sweep_index,
                }
                for r in runs
            ],
            # one per sweep spec, in the order of the specs: its points' runs, by index
            "sweeps": sweeps,
        }

    def validate(self, req: Request) -> dict[str, Any]:
        """What `submit` would say about a spec, without queueing it (parsed once, here)."""
        from hpcops.spec import parse_spec

        authorize("submit", req.caller, req.role)
        params = ValidateParams.parse(req.params)
        base_dir = Path(params.base_dir) if params.base_dir is not None else None
        spec = parse_spec(params.yaml, params.source, base_dir=base_dir)
        self.daemon.engine.check_spec(spec, params.source)
        check_priority(spec.priority, req.role, self.access)
        return {
            "valid": True,
            "name": spec.name,
            # a sweep spec: how many points, and each point's values in index order
            "sweep": sweep_preview(spec),
        }

    def rerun(self, req: Request) -> dict[str, Any]:
        """Queue a run again from its record (hpcops/tracking): params.run is an hpcops run id
        or an MLflow run id, params.set the `--set` overrides {"params.lr": "0.01"}. The engine
        parses the recorded spec with the overrides applied, once."""
        from hpcops.tracking.rerun import check_key

        authorize("submit", req.caller, req.role)
        params = RerunParams.parse(req.params)
        source, overrides = params.run, params.overrides
        if isinstance(source, SweepId):
            return self._rerun_sweep(req, source, overrides)
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
            # a point's rerun is a point of the same sweep, at the same index
            "sweep": sweep_ref(run.sweep_id),
            "sweep_index": run.sweep_index,
        }

    def _rerun_sweep(
        self, req: Request, source: SweepId, overrides: dict[str, str]
    ) -> dict[str, Any]:
        """Every point of a sweep again, as a new sweep of the same spec and points."""
        if overrides:
            raise InvalidInput(
                f"--set changes one run's spec; sweep {source} is rerun as it was. Rerun one of "
                "its points with --set, or submit an edited copy of its spec"
            )
        engine = self.daemon.engine
        old = self.daemon.store.get_sweep(source.number)
        # engine.rerun checks a run's priority through its `check`; a sweep's is read here.
        check_priority(_stored_priority(old), req.role, self.access)
        sweep, runs = engine.rerun_sweep(source.number, req.caller)
        self.daemon.audit(
            req.caller,
            req.role,
            "rerun",
            f"sweep s{sweep.id}",
            allowed=True,
            after=f"{len(runs)} points QUEUED (runs {id_ranges(run_id(r) for r in runs)})",
            detail=f"rerun of {source}",
        )
        return {
            "type": "sweep",
            "id": sweep_ref(sweep.id),
            "sweep_id": sweep.id,
            "name": sweep.name,
            "state": RunState.QUEUED.value,
            "n_points": len(runs),
            "runs": [r.id for r in runs],
            "rerun_of": str(source),
        }

    # --- requests on a run ------------------------------------------------------------------

    def cancel(self, req: Request) -> dict[str, Any]:
        target = TargetParams.parse(req.params).run
        if isinstance(target, SweepId | PipelineId):
            return self.sweeps.cancel(req, target)
        run = self.daemon.run_for(req, target, "cancel")
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
        if isinstance(params.run, SweepId | PipelineId):
            return self.sweeps.priority(req, params.run, value)
        lead_decision_guard(
            req, self.daemon.run_for(req, params.run, "priority"), "priority", self.access
        )

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
        target = TargetParams.parse(req.params).run
        if isinstance(target, SweepId | PipelineId):
            return self.sweeps.hold(req, target)
        return self._change_run(
            req,
            target,
            "hold",
            lambda run: self.daemon.engine.hold(run_id(run), req.caller),
            "state",
            lambda run, _: f"run {run.id} held",
        )

    def release(self, req: Request) -> dict[str, Any]:
        target = TargetParams.parse(req.params).run
        if isinstance(target, SweepId | PipelineId):
            return self.sweeps.release(req, target)
        lead_decision_guard(
            req, self.daemon.run_for(req, target, "release"), "release", self.access
        )
        return self._change_run(
            req,
            target,
            "release",
            lambda run: self.daemon.engine.release_hold(run_id(run), req.caller),
            "state",
            lambda run, _: f"run {run.id} released",
        )

    def top(self, req: Request) -> dict[str, Any]:
        target = TargetParams.parse(req.params).run
        if isinstance(target, SweepId | PipelineId):
            return self.sweeps.top(req, target)
        return self._change_run(
            req,
            target,
            "top",
            lambda run: self.daemon.engine.top(run_id(run), req.caller),
            "priority",
            lambda run, updated: f"run {run.id} goes next (priority {updated.priority})",
        )

    def retry(self, req: Request) -> dict[str, Any]:
        """A new attempt of an ended run: the same run id, run directory and checkpoint
        directory, queued again (engine.retry). A sweep: each point's latest run that ended
        otherwise than COMPLETED."""
        target = TargetParams.parse(req.params).run
        if isinstance(target, PipelineId):
            raise InvalidInput(
                f"a pipeline is not retried: its steps are rerun, `hpcops rerun {target}.STEP` "
                "(with --downstream, and every step after it); `hpcops show "
                f"{target}` names its steps"
            )
        if isinstance(target, SweepId):
            return self.sweeps.retry(req, target)
        engine = self.daemon.engine
        run = self.daemon.store.get(target)
        authorize("retry", req.caller, req.role, owner=run.owner)
        check_retryable(run)
        updated = engine.retry(target, req.caller)
        # Read off the run as queued again, by the count its job's HPCOPS_ATTEMPT will use.
        number = attempt_number(updated)
        self.daemon.audit(
            req.caller,
            req.role,
            "retry",
            f"run {target}",
            allowed=True,
            before=run.state,
            after=updated.state,
            detail=f"attempt {number}",
        )
        limit = updated.max_attempts
        of = f" of {limit}" if number <= limit and limit > 1 else ""
        return {
            "id": updated.id,
            "name": updated.name,
            "state": updated.state,
            "attempt_number": number,
            "max_attempts": limit,
            "previous_state": run.state,
            "message": f"run {target}: attempt {number}{of} {str(updated.state).lower()} "
            f"(after {run.state}; same run directory and checkpoint directory)",
        }

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


def parse_file_text(item: SpecItem) -> Spec:
    """The spec an item carries. A file's own text (`base_dir` set, the fast entry's submit)
    must not need what only the CLI's full path does: pinning and shipping code, mentioning a
    schedule: block, reading a pipeline's steps. Refused as NeedsFullPath, the client hands the
    call to that path."""
    from hpcops.spec import parse_spec

    base_dir = Path(item.base_dir) if item.base_dir is not None else None
    try:
        spec = parse_spec(item.yaml, item.source, base_dir=base_dir)
    except InvalidInput:
        from hpcops.pipeline import is_pipeline_text

        if base_dir is not None and is_pipeline_text(item.yaml):
            # A pipeline whose steps: the client's line scan missed (JSON, quoted keys).
            raise NeedsFullPath(
                f"{item.source}: a pipeline goes through the CLI's full path (hpcops submit "
                "reads its steps' specs); nothing was queued"
            ) from None
        raise
    if base_dir is not None and (spec.code is not None or spec.schedule is not None):
        raise NeedsFullPath(
            f"{item.source}: a spec with code: or schedule: goes through the CLI's full path "
            "(hpcops submit pins and ships its code, and names its schedule); nothing was queued"
        )
    return spec


def _stored_priority(sweep: Sweep) -> int:
    """The priority in a sweep's stored spec (0 when it names none)."""
    data = read_yaml(sweep.spec_yaml)
    value = data.get("priority", 0) if isinstance(data, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def check_retryable(run: Run) -> None:
    """Refuse, before the engine, a run `hpcops retry` does not take (the engine checks again,
    in the transaction that queues it)."""
    refused = why_not_retryable(run_id(run), RunState(run.state))
    if refused is not None:
        raise InvalidInput(refused)
