"""Pipelines in the API: `submit_pipeline`, a pipeline file as the client loaded it, and
`rerun_step`, a step of a pipeline again (with `downstream`, every step after it too).

Reading a pipeline (`show p3`, its one row in `ls`) is hpcops/api/handlers/runs.py's; a request
on a whole pipeline (`cancel p3`, `hold p3`, ...) is sweep_requests.py's, as on a sweep.
"""

from __future__ import annotations

from typing import Any

from hpcops.access import authorize, check_priority
from hpcops.api.handlers.base import Daemon, Handler, Request, run_id
from hpcops.api.params import RerunStepParams, SubmitPipelineParams
from hpcops.api.views import pipeline_ref, sweep_ref
from hpcops.describe import id_ranges
from hpcops.engine.pipelines import definition_of
from hpcops.errors import InvalidInput
from hpcops.pipeline import downstream, pipeline_from_wire
from hpcops.states import RunState


class PipelineHandlers:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.access = daemon.config.access

    def methods(self) -> dict[str, Handler]:
        return {"submit_pipeline": self.submit, "rerun_step": self.rerun_step}

    def submit(self, req: Request) -> dict[str, Any]:
        """Queue a pipeline: every step and its runs, or nothing. The client loaded the files;
        here every check but their reading is made again (pipeline_from_wire), and the engine
        checks each step's spec against the cluster as `submit` does a spec's."""
        authorize("submit", req.caller, req.role)
        params = SubmitPipelineParams.parse(req.params)
        loaded = pipeline_from_wire(params.pipeline)
        for spec in loaded.specs.values():
            check_priority(spec.priority, req.role, self.access)
        unknown = sorted(set(params.code) - set(loaded.specs))
        if unknown:
            raise InvalidInput(
                f"params.code names {', '.join(unknown)}: no spec step of pipeline "
                f"{loaded.name}, whose spec steps are {', '.join(loaded.specs)}"
            )
        shipments = {step: code.shipment() for step, code in params.code.items()}
        pipeline, runs = self.daemon.engine.enqueue_pipeline(loaded, req.caller, shipments)
        assert pipeline.id is not None  # stored
        steps = self.daemon.store.pipeline_steps([pipeline.id])[pipeline.id]
        of_step: dict[str, list[int]] = {}
        for run in runs:
            of_step.setdefault(run.pipeline_step or "", []).append(run_id(run))
        ref = pipeline_ref(pipeline.id)
        # One audit row per pipeline, as per sweep: queueing it is one decision.
        self.daemon.audit(
            req.caller,
            req.role,
            "submit",
            f"pipeline {ref}",
            allowed=True,
            after=f"{len(steps)} steps QUEUED (runs {id_ranges(run_id(r) for r in runs)})",
            detail=loaded.source,
        )
        return {
            "type": "pipeline",
            "id": ref,
            "pipeline_id": pipeline.id,
            "name": pipeline.name,
            "state": RunState.QUEUED.value,
            # in the pipeline file's order: each step's kind, its run or sweep, its runs
            "steps": [
                {
                    "name": step.name,
                    "kind": step.kind,
                    "run_id": step.run_id,
                    "sweep": sweep_ref(step.sweep_id),
                    "runs": of_step.get(step.name, []),
                }
                for step in steps
            ],
        }

    def rerun_step(self, req: Request) -> dict[str, Any]:
        """A step of a pipeline again from the specs it was queued with (the same code commit
        and data versions), and with `downstream` every step after it; each waits for its
        parents as at first. Only the pipeline's owner or a lead: the new runs join it."""
        params = RerunStepParams.parse(req.params)
        number, step = params.pipeline.number, params.step
        pipeline = self.daemon.store.get_pipeline(number)
        authorize("rerun_step", req.caller, req.role, owner=pipeline.owner, thing="pipeline")
        runs = self.daemon.engine.rerun_step(number, step, params.downstream, req.caller)
        graph = definition_of(pipeline).graph
        names = [step, *(downstream(graph, step) if params.downstream else [])]
        ids = [run_id(r) for r in runs]
        ref = pipeline_ref(number)
        self.daemon.audit(
            req.caller,
            req.role,
            "rerun_step",
            f"pipeline {ref} step {step}",
            allowed=True,
            after=f"{', '.join(names)} QUEUED" + (f" (runs {id_ranges(ids)})" if ids else ""),
            detail="with the steps after it" if params.downstream else "",
        )
        runs_text = f" (runs {id_ranges(ids)})" if ids else ""
        return {
            "id": ref,
            "pipeline_id": number,
            "step": step,
            "downstream": params.downstream,
            "steps": names,
            "runs": ids,
            "message": f"pipeline {ref}: {', '.join(names)} queued again{runs_text}; each step "
            "waits for the steps before it, as at first",
        }
