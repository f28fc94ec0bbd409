"""Pipelines in the engine: queueing one, and the tick's step that moves its steps along.

Queued, a pipeline is one Pipeline row, one PipelineStep per step and each spec step's runs (a
sweep step: a Sweep and its points), every run `gated`: release leaves it alone. Each tick,
`advance` reads the open pipelines' step states and, by the graph's pure rules
(hpcops/pipeline/graph.py):
  - opens each step whose every parent COMPLETED (Store.open_step: in one transaction the gate
    is lifted and the job's inputs written), after which the lab's policy releases its runs as
    any other's; a register step goes RUNNING and the tracker promotes its model;
  - ends as CANCELLED, with the reason, each waiting step that can never run ("waits for
    train, which FAILED"): nothing is left pending, in hpcops or in Slurm;
  - marks a pipeline whose steps have all ended, with its outcome.

The graph is held here and not by Slurm's `afterok`, which is dropped silently once the parent
job is purged (issue 15). Every decision is made again from the database each tick, and each
change is one transaction, so a daemon killed between a parent's end and its child's release
opens the child on its next tick, once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

from hpcops.access import Caller
from hpcops.code.mirror import Shipment
from hpcops.engine.intake import build_sweep, check_spec, new_run, pin
from hpcops.engine.pipeline_env import StepOutput, step_env
from hpcops.engine.state import LoopState, Parts
from hpcops.engine.submit import fault_point
from hpcops.errors import FieldProblem, NotFound, SpecError
from hpcops.lifecycle import DAEMON
from hpcops.pipeline import Pipeline as LoadedPipeline
from hpcops.pipeline import PipelineDef, doomed, ready
from hpcops.pipeline import downstream as downstream_of
from hpcops.pipeline.progress import pipeline_state, sweep_step_state
from hpcops.spec import Spec, parse_spec
from hpcops.states import RunState
from hpcops.store import Pipeline, PipelineStep, Run, StepRuns
from hpcops.yamlio import dotted

log = logging.getLogger(__name__)


# ─── queueing ──────────────────────────────────────────────────────────────────────────────────


def build_pipeline(
    p: Parts,
    s: LoopState,
    loaded: LoadedPipeline,
    caller: Caller,
    shipments: Mapping[str, Shipment | None] | None = None,
) -> tuple[Pipeline, list[PipelineStep], dict[str, StepRuns]]:
    """A loaded pipeline's rows, checked as `submit` checks a spec and not yet stored: each spec
    step pinned (code commit, data versions) and checked against the cluster. `shipments`: per
    step, what the submitter's client did about its code."""
    _check_tracking(p, loaded)
    steps: list[PipelineStep] = []
    runs: dict[str, StepRuns] = {}
    pinned: dict[str, str] = {}
    for position, (name, step) in enumerate(loaded.steps.items()):
        kind = "register" if step.promotion is not None else "run"
        spec = loaded.specs.get(name)
        if spec is not None:
            source = f"{loaded.source}, step {name}"
            shipment = (shipments or {}).get(name)
            spec, fields = pin(p, spec, shipment, source, caller)
            if spec.sweep is not None:
                kind = "sweep"
                sweep, points = build_sweep(p, s, spec, fields, source, caller)
                runs[name] = (sweep, points)
                pinned[name] = sweep.spec_yaml
            else:
                check_spec(p, s, spec, source)
                run = new_run(p, spec, caller, **fields)
                runs[name] = (None, [run])
                pinned[name] = run.spec_yaml
        steps.append(
            PipelineStep(pipeline_id=0, name=name, position=position, kind=kind, updated_at=0)
        )
    first = next(iter(loaded.specs.values()), None)
    row = Pipeline(
        name=loaded.name,
        experiment=first.experiment if first is not None else "Default",
        owner=caller.name,
        owner_uid=caller.uid,
        source=loaded.source,
        definition_json=loaded.definition.model_dump_json(by_alias=True),
        specs_json=json.dumps(pinned),
        created_at=p.clock(),
        updated_at=p.clock(),
    )
    return row, steps, runs


def enqueue_pipeline(
    p: Parts,
    s: LoopState,
    loaded: LoadedPipeline,
    caller: Caller,
    shipments: Mapping[str, Shipment | None] | None = None,
) -> tuple[Pipeline, list[Run]]:
    """Queue a pipeline: every step and its runs, or nothing."""
    row, steps, runs = build_pipeline(p, s, loaded, caller, shipments)
    added = p.store.add_pipeline(row, steps, runs, actor=caller.name)
    s.changed()
    if p.tracker is not None:
        p.tracker.wake.set()
    return added


def _check_tracking(p: Parts, loaded: LoadedPipeline) -> None:
    """A register step and a `.best` input need the runs' MLflow records: refused up front
    when this daemon records nothing, rather than ending the step CANCELLED tomorrow."""
    if p.tracker is not None:
        return
    problems = []
    for name, step in loaded.steps.items():
        if step.promotion is not None:
            problems.append(
                FieldProblem(
                    dotted(("steps", name, "register")),
                    "needs MLflow tracking, which is off in this daemon's config "
                    "(tracking.enabled)",
                )
            )
        for key, ref in step.inputs.items():
            if ref.endswith(".best"):
                problems.append(
                    FieldProblem(
                        dotted(("steps", name, "inputs", key)),
                        f"{ref!r} needs the sweep's objective from MLflow, and tracking is off "
                        "in this daemon's config (tracking.enabled)",
                    )
                )
    if problems:
        raise SpecError(loaded.source, problems)


# ─── the tick's step ───────────────────────────────────────────────────────────────────────────


def advance(p: Parts, s: LoopState) -> None:
    """Open the steps whose parents completed, end those that can never run, and mark the
    pipelines whose steps have all ended. One pipeline's surprise costs only that pipeline."""
    pipelines = p.store.list_pipelines(open_only=True)
    if not pipelines:
        return
    steps = p.store.pipeline_steps(x.id for x in pipelines if x.id is not None)
    for pipeline in pipelines:
        assert pipeline.id is not None
        try:
            if _advance_one(p, pipeline, steps[pipeline.id]):
                s.changed()
        except Exception:
            log.exception("pipeline p%s: its steps were not moved on this tick", pipeline.id)


def definition_of(pipeline: Pipeline) -> PipelineDef:
    """The stored definition (our own JSON, written at queueing)."""
    return PipelineDef.model_validate_json(pipeline.definition_json, strict=False)


def step_states(p: Parts, steps: Sequence[PipelineStep]) -> dict[str, RunState]:
    """Each step's state (hpcops/pipeline/progress.py's rules), from the database."""
    runs = {r.id: r for r in p.store.runs_by_ids([x.run_id for x in steps if x.run_id])}
    sweep_ids = [x.sweep_id for x in steps if x.sweep_id is not None]
    counts = p.store.sweep_counts(sweep_ids)
    states: dict[str, RunState] = {}
    for step in steps:
        if step.kind == "register":
            states[step.name] = step.state or RunState.QUEUED
        elif step.sweep_id is not None:
            points = [
                RunState(k) for k, n in counts.get(step.sweep_id, {}).items() for _ in range(n)
            ]
            states[step.name] = sweep_step_state(points)
        elif step.run_id in runs:
            states[step.name] = RunState(runs[step.run_id].state)
        else:
            states[step.name] = RunState.UNKNOWN
    return states


def _advance_one(p: Parts, pipeline: Pipeline, steps: Sequence[PipelineStep]) -> bool:
    definition = definition_of(pipeline)
    graph = definition.graph
    by_name = {x.name: x for x in steps}
    states = step_states(p, steps)
    moved = False
    for name in ready(graph, states):
        step = by_name[name]
        if step.opened_at is not None or step.id is None:
            continue  # released already; its runs are the policy's now
        outputs = _outputs(p, definition, name, by_name)
        if isinstance(outputs, str):
            p.store.end_step(step.id, RunState.CANCELLED, outputs, DAEMON)
            moved = True
            continue
        if outputs is None:
            continue  # a sweep's best point is still being ranked: next tick
        parents, inputs, model_run = outputs
        env = step_env(pipeline.name, pipeline.id or 0, name, parents, inputs)
        if p.store.open_step(step.id, json.dumps(env), DAEMON, model_run_id=model_run):
            log.info("pipeline p%s: step %s opened", pipeline.id, name)
            fault_point(p, "after_step_opened")
            moved = True
            if step.kind == "register" and p.tracker is not None:
                p.tracker.wake.set()
    for name, reason in doomed(graph, states).items():
        step = by_name[name]
        if step.id is not None:
            p.store.end_step(step.id, RunState.CANCELLED, reason, DAEMON)
            moved = True
    if moved:
        states = step_states(p, steps)
    outcome = pipeline_state(list(graph), states)
    if outcome.is_terminal:
        assert pipeline.id is not None
        p.store.update_pipeline(pipeline.id, ended_at=p.clock(), outcome=outcome.value)
        if p.tracker is not None:
            p.tracker.wake.set()  # the pipeline's parent record ends
        moved = True
    return moved


_Outputs = tuple[dict[str, StepOutput], dict[str, StepOutput], int | None]


def _outputs(
    p: Parts, definition: PipelineDef, name: str, by_name: Mapping[str, PipelineStep]
) -> _Outputs | str | None:
    """What a step about to open receives: its parents' outputs, its inputs, and a register
    step's model run. None: not known yet (a sweep is being ranked); a string: never will be
    (the reason the step ends CANCELLED)."""
    step = definition.steps[name]
    wanted = dict.fromkeys(step.after, "run")
    for ref in step.inputs.values():
        source, _, output = ref.rpartition(".")
        wanted[source] = "best" if output == "best" else wanted.get(source, "run")
    model = step.promotion.model if step.promotion is not None else None
    if model is not None:
        wanted[model] = "best" if by_name[model].kind == "sweep" else wanted.get(model, "run")
    known: dict[str, tuple[StepOutput, StepOutput | None]] = {}
    for source, need in wanted.items():
        found = _output(p, by_name[source], need == "best")
        if found is None or isinstance(found, str):
            return found
        known[source] = found
    parents = {x: known[x][0] for x in step.after}
    inputs: dict[str, StepOutput] = {}
    for key, ref in step.inputs.items():
        source, _, output = ref.rpartition(".")
        run_out, best = known[source]
        inputs[key] = best if output == "best" and best is not None else run_out
    model_run = None
    if model is not None:
        run_out, best = known[model]
        model_run = (best or run_out).run_id
    return parents, inputs, model_run


def _output(
    p: Parts, step: PipelineStep, want_best: bool
) -> tuple[StepOutput, StepOutput | None] | str | None:
    """(the step's run output, its best point's when asked), None to wait, or why never."""
    if step.sweep_id is None:
        if step.run_id is None:
            return StepOutput(), None
        run = p.store.get(step.run_id)
        return _run_output(run), None
    sweep = p.store.get_sweep(step.sweep_id)
    whole = StepOutput(mlflow_run_id=sweep.mlflow_run_id)
    if not want_best:
        return whole, None
    if p.tracker is not None and sweep.closed_at is None:
        return None  # its points' objectives are still being read
    if sweep.best_run_id is None:
        return (
            f"waits for {step.name}'s best point, and no point of sweep s{sweep.id} logged its "
            f"objective {sweep.objective_metric!r}"
        )
    best = p.store.get(sweep.best_run_id)
    out = _run_output(best)
    params = _params(best)
    return whole, StepOutput(
        run_id=out.run_id,
        run_dir=out.run_dir,
        mlflow_run_id=out.mlflow_run_id,
        params=params,
        value=sweep.best_value,
    )


def _run_output(run: Run) -> StepOutput:
    return StepOutput(run_id=run.id, run_dir=run.run_dir or None, mlflow_run_id=run.mlflow_run_id)


def _params(run: Run) -> dict[str, object]:
    try:
        spec: Spec = parse_spec(run.spec_yaml, f"run {run.id}")
    except SpecError:
        return {}
    return dict(spec.params)


# ─── requests on a whole pipeline ──────────────────────────────────────────────────────────────


def current_runs(p: Parts, pipeline_id: int) -> list[Run]:
    """The runs of the pipeline's steps as they stand (a rerun step's new runs, not its old)."""
    steps = p.store.pipeline_steps([pipeline_id])[pipeline_id]
    current_run_ids = {x.run_id for x in steps if x.run_id is not None}
    current_sweeps = {x.sweep_id for x in steps if x.sweep_id is not None}
    return [
        r
        for r in p.store.pipeline_runs(pipeline_id)
        if r.id in current_run_ids or (r.sweep_id is not None and r.sweep_id in current_sweeps)
    ]


def cancel_register_steps(p: Parts, pipeline_id: int, caller: Caller) -> list[str]:
    """A cancelled pipeline's register steps that have not ended end CANCELLED; their names."""
    ended: list[str] = []
    for step in p.store.pipeline_steps([pipeline_id])[pipeline_id]:
        if step.kind != "register" or step.id is None:
            continue
        if step.state is not None and step.state.is_terminal:
            continue
        p.store.end_step(step.id, RunState.CANCELLED, f"cancelled by {caller.name}", caller.name)
        ended.append(step.name)
    return ended


def rebuild_steps(
    p: Parts, s: LoopState, pipeline: Pipeline, names: Sequence[str], caller: Caller
) -> dict[str, StepRuns]:
    """New runs for some steps of a pipeline, from the specs it was queued with (pinned: the
    same code commit and data versions), for `hpcops rerun p3.train --downstream`."""
    specs = json.loads(pipeline.specs_json)
    old = {x.name: x for x in p.store.pipeline_steps([pipeline.id or 0])[pipeline.id or 0]}
    fresh: dict[str, StepRuns] = {}
    for name in names:
        text = specs.get(name)
        if text is None:  # a register step: no runs, only its state goes back to QUEUED
            fresh[name] = (None, [])
            continue
        label = f"rerun of p{pipeline.id} step {name}"
        spec = parse_spec(text, label)
        earlier = _earlier_run(p, old[name])
        shipment = None
        if earlier is not None and earlier.code_checkout is not None:
            shipment = Shipment(checkout=earlier.code_checkout, dirty=earlier.code_dirty)
        spec, fields = pin(p, spec, shipment, label, caller)
        if spec.sweep is not None:
            sweep, points = build_sweep(p, s, spec, fields, label, caller)
            sweep.rerun_of_sweep = old[name].sweep_id
            fresh[name] = (sweep, points)
        else:
            run = new_run(p, spec, caller, **fields)
            run.rerun_of_run = old[name].run_id
            fresh[name] = (None, [run])
    return fresh


def _earlier_run(p: Parts, step: PipelineStep) -> Run | None:
    if step.run_id is not None:
        return p.store.get(step.run_id)
    if step.sweep_id is not None:
        points = p.store.sweep_runs(step.sweep_id)
        return points[0] if points else None
    return None


def rerun_steps(
    p: Parts, s: LoopState, pipeline_id: int, step: str, downstream: bool, caller: Caller
) -> list[Run]:
    """Run a step of a pipeline again (and, with `downstream`, every step after it): new runs
    from the pinned specs, waiting for their parents as at first; the pipeline is open again."""
    pipeline = p.store.get_pipeline(pipeline_id)
    graph = definition_of(pipeline).graph
    if step not in graph:
        raise NotFound(
            f"pipeline p{pipeline_id} has no step {step!r}; its steps are {', '.join(graph)}"
        )
    names = [step, *(downstream_of(graph, step) if downstream else [])]
    fresh = rebuild_steps(p, s, pipeline, names, caller)
    runs = p.store.restart_steps(
        pipeline_id, fresh, caller.name, f"rerun of p{pipeline_id} step {step}"
    )
    s.changed()
    if p.tracker is not None:
        p.tracker.wake.set()
    return runs
