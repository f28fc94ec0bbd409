"""A pipeline's MLflow parent run, its steps' records nested under it, and its register steps'
promotions in the Model Registry.

The parent holds what is the pipeline's own: tags `hpcops.kind` = pipeline, `hpcops.pipeline_id`
and its steps' names (`hpcops.pipeline.steps`), and its definition as `hpcops/pipeline.json`.
Under it, MLflow's own nesting (`mlflow.parentRunId`): each run step's record, and each sweep
step's parent (whose points stay nested under their sweep). It ends when the engine marks the
pipeline ended, once every step's record is complete: FINISHED when it COMPLETED, FAILED or
KILLED otherwise (as a run of that state would); a step run again sets it RUNNING until the
pipeline ends once more. A register step's promotion is recorded on it too (`hpcops.promotion.*`:
the step, model, version, alias, decision and why; the last promotion's, when there are several).

How the work is found: each tracking pass scans the pipelines the tracker still owes something
(Store.pipelines_to_track: the open ones and those whose parent has not ended; one query, and
none to act on most passes) and brings each up to date from the database, so doing a pass twice
does no harm. It runs before the outbox, so that a step's record is usually created under a
parent that exists already (worker.py asks `known_parent`); one created before it is nested by
a later pass. A record's nesting is kept as the run's PARENT_CURSOR, as a sweep's point's is;
a sweep's parent's only in memory, so a restarted daemon sets that tag once more (one request
per sweep step).

Idempotent creation, as a sweep's parent (parents.py): the parent is looked up by its
`hpcops.key` before it is made, and its id is stored only once its artifact is on the server.

A register step (state RUNNING, its model run fixed by the engine) is promoted once its model
run's record is complete (every outbox operation of that run done: its metrics and, in relay
mode, its artifacts are on the server): registry.promote, then the step ended COMPLETED with a
one-line reason and the Promotion as JSON, or FAILED with why (no model, no record). A server
that does not answer costs that step a retry with the outbox's back-off, nothing else; the
promotion is idempotent (registry.py), so a retry or a crash registers nothing twice. The
tracking thread is one thread: two promotions of one registered model never run at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hpcops import __version__
from hpcops.backoff import backoff_s
from hpcops.errors import NotFound, TrackingRejected, TrackingUnreachable
from hpcops.pipeline import PipelineDef, Register
from hpcops.states import RunState
from hpcops.store import Pipeline, PipelineStep, Run, Store
from hpcops.tracking import records, registry
from hpcops.tracking.parents import KIND_TAG, PARENT_CURSOR
from hpcops.tracking.records import Batch
from hpcops.tracking.registry import Promotion
from hpcops.tracking.server import TrackingServer

log = logging.getLogger(__name__)

PIPELINE_ID_TAG = records.PIPELINE_ID_TAG
PIPELINE_STEP_TAG = records.PIPELINE_STEP_TAG
STEPS_TAG = "hpcops.pipeline.steps"
SOURCE_TAG = "hpcops.pipeline.source"
OUTCOME_TAG = "hpcops.pipeline.outcome"
PIPELINE_ARTIFACT = "pipeline.json"
PROMOTION_PREFIX = "hpcops.promotion."
_ACTOR = "daemon"
_TAG_MAX = 5000
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 60.0
_REFUSED_FIRST_S = 10.0
_REFUSED_MAX_S = 600.0

Promote = Callable[[str, str, str, str, str, str | None, registry.Mode], Promotion]


def pipeline_key(lab: str, home: Path, pipeline_id: int) -> str:
    """The parent's `hpcops.key`: never a run's or a sweep's, never another daemon's."""
    return f"{records.instance_key(lab, home, pipeline_id)}:pipeline"


# --- what the parent holds (pure) --------------------------------------------------------------


def definition_of(pipeline: Pipeline) -> PipelineDef | None:
    """The stored definition (hpcops' own JSON, written at queueing); None if it does not read."""
    try:
        return PipelineDef.model_validate_json(pipeline.definition_json, strict=False)
    except ValidationError as exc:
        log.warning("pipeline p%s: its stored definition does not read: %s", pipeline.id, exc)
        return None


def parent_tags(
    pipeline: Pipeline, steps: Sequence[str], *, key: str, version: str
) -> dict[str, str]:
    assert pipeline.id is not None
    tags = {
        "mlflow.user": pipeline.owner,
        "mlflow.runName": pipeline.name,
        records.KEY_TAG: key,
        KIND_TAG: "pipeline",
        PIPELINE_ID_TAG: str(pipeline.id),
        STEPS_TAG: ", ".join(steps)[:_TAG_MAX],
        SOURCE_TAG: pipeline.source[:_TAG_MAX],
        "hpcops.owner": pipeline.owner,
        "hpcops.version": version,
    }
    if pipeline.schedule_id is not None:
        tags["hpcops.schedule_id"] = str(pipeline.schedule_id)
    return tags


def parent_status(outcome: str | None) -> str:
    """The ended parent's status: FINISHED when the pipeline COMPLETED, else what a run that
    ended so would get (CANCELLED: KILLED; FAILED and the like: FAILED)."""
    try:
        state = RunState(outcome or "")
    except ValueError:
        return records.FAILED
    if not state.is_terminal:
        return records.FAILED
    return records.mlflow_status(state)


def promotion_reason(promotion: Promotion, metric: str | None) -> str:
    """One line for the register step: "registered digits-classifier v3; champion moved from
    v2 (accuracy 0.95 > 0.93, +0.02)" or "... champion kept on v2 (...)"; pure."""
    p = promotion
    head = f"registered {p.model_name} v{p.version}"
    if p.moved and p.holder_version is None:
        where = f"{p.alias} set to v{p.version}"
    elif p.moved and p.holder_version == p.version:
        where = f"{p.alias} already on v{p.version}"
    elif p.moved:
        where = f"{p.alias} moved from v{p.holder_version}"
    elif p.holder_version is not None:
        where = f"{p.alias} kept on v{p.holder_version}"
    else:
        where = f"{p.alias} not set"
    cand, held, margin = p.candidate_value, p.holder_value, p.margin
    if metric and cand is not None and held is not None and margin is not None:
        relation = ">" if cand > held else "<" if cand < held else "="
        detail = f"{metric} {cand:g} {relation} {held:g}, {margin:+g}"
    else:
        detail = p.reason
    return " ".join(f"{head}; {where} ({detail})".split())


def promotion_tags(step: str, promotion: Promotion, reason: str) -> dict[str, str]:
    """What the pipeline's parent records of a promotion (its last one, if several)."""
    return {
        f"{PROMOTION_PREFIX}step": step,
        f"{PROMOTION_PREFIX}model": promotion.model_name,
        f"{PROMOTION_PREFIX}version": promotion.version,
        registry.ALIAS_TAG: promotion.alias,
        registry.DECISION_TAG: "moved" if promotion.moved else "kept",
        registry.REASON_TAG: reason[:_TAG_MAX],
    }


def promotion_json(promotion: Promotion) -> str:
    """The Promotion as JSON (PipelineStep.result_json); a number that is not finite is null."""
    data: dict[str, Any] = dataclasses.asdict(promotion)
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            data[key] = None
    return json.dumps(data, sort_keys=True)


# --- the parent and the promotions on the server -------------------------------------------------


class PipelineParents:
    """The tracking thread's work on pipelines (called by the Tracker, on its thread)."""

    def __init__(
        self,
        store: Store,
        *,
        lab: str,
        home: Path,
        uri: str,
        clock: Callable[[], float] = time.time,
        promote: Promote = registry.promote,
    ) -> None:
        self.store = store
        self.lab = lab
        self.home = home
        self.uri = uri
        self.clock = clock
        self.promote = promote
        # Per pipeline (its parent) and per register step: failures in a row, and when to retry.
        self._waits: dict[tuple[str, int], tuple[int, float]] = {}
        # What this daemon has nested already: a run step's record (run id) and a sweep's parent
        # (sweep id), each by the pipeline parent it is under.
        self._runs_nested: dict[int, str] = {}
        self._sweeps_nested: dict[int, str] = {}

    # --- asked by the worker ---------------------------------------------------------------

    def known_parent(self, run: Run) -> str | None:
        """The pipeline parent a run step's record is created under, if it exists (no request).
        A sweep's points are nested under their sweep's parent instead."""
        if run.pipeline_id is None or run.sweep_id is not None:
            return None
        try:
            return self.store.get_pipeline(run.pipeline_id).mlflow_run_id
        except NotFound:
            return None

    # --- the pass --------------------------------------------------------------------------

    def sync(self, server: TrackingServer) -> None:
        """Bring every pipeline the tracker owes something up to date. A pipeline whose
        requests fail (refused, unanswered, or anything else) waits alone, with back-off."""
        pipelines = self.store.pipelines_to_track()
        if not pipelines:
            if self._waits or self._runs_nested or self._sweeps_nested:
                self._waits, self._runs_nested, self._sweeps_nested = {}, {}, {}
            return
        steps = self.store.pipeline_steps(p.id for p in pipelines if p.id is not None)
        for pipeline in pipelines:
            assert pipeline.id is not None
            mine = steps.get(pipeline.id, [])
            if self._due(("pipeline", pipeline.id)):
                try:
                    self._sync_parent(server, pipeline, mine)
                    self._waits.pop(("pipeline", pipeline.id), None)
                except TrackingUnreachable as exc:
                    # As a sweep's parent: this costs this parent a retry, not every run's
                    # record a wait; a server that is down fails the outbox's next request too.
                    delay = self._wait(("pipeline", pipeline.id), refused=False)
                    log.warning(
                        "pipeline p%s: parent not updated (retry in %.0f s): %s",
                        pipeline.id,
                        delay,
                        exc,
                    )
                except TrackingRejected as exc:
                    self._wait(("pipeline", pipeline.id), refused=True)
                    log.warning("pipeline p%s: MLflow refused its parent: %s", pipeline.id, exc)
                except Exception:
                    self._wait(("pipeline", pipeline.id), refused=True)
                    log.exception("pipeline p%s: its parent record was not updated", pipeline.id)
            for step in mine:
                if step.kind != "register" or step.state != RunState.RUNNING or step.id is None:
                    continue
                try:
                    self._promote_step(server, pipeline, step)
                except Exception:
                    self._wait(("step", step.id), refused=True)
                    log.exception("pipeline p%s: step %s was not promoted", pipeline.id, step.name)

    def _due(self, what: tuple[str, int]) -> bool:
        return self.clock() >= self._waits.get(what, (0, 0.0))[1]

    def _wait(self, what: tuple[str, int], *, refused: bool) -> float:
        failures = self._waits.get(what, (0, 0.0))[0] + 1
        if refused:
            delay = backoff_s(failures, first_s=_REFUSED_FIRST_S, max_s=_REFUSED_MAX_S)
        else:
            delay = backoff_s(failures, first_s=_BACKOFF_FIRST_S, max_s=_BACKOFF_MAX_S)
        self._waits[what] = (failures, self.clock() + delay)
        return delay

    def _sync_parent(
        self, server: TrackingServer, pipeline: Pipeline, steps: Sequence[PipelineStep]
    ) -> None:
        parent = self.ensure(server, pipeline)
        self._nest_steps(server, pipeline, parent, steps)
        self._settle(server, pipeline, parent)

    def ensure(self, server: TrackingServer, pipeline: Pipeline) -> str:
        """The pipeline's parent run id, the parent made first if it is not recorded yet: found
        by its key before it is made, its id stored only once its artifact is on the server."""
        assert pipeline.id is not None
        if pipeline.mlflow_run_id is not None:
            return pipeline.mlflow_run_id
        experiment_id = server.experiment_id(pipeline.experiment)
        key = pipeline_key(self.lab, self.home, pipeline.id)
        parent = server.find_run(experiment_id, records.KEY_TAG, key)
        if parent is None:
            definition = definition_of(pipeline)
            steps = list(definition.steps) if definition is not None else []
            parent = server.create_run(
                experiment_id,
                name=pipeline.name,
                user=pipeline.owner,
                start_ms=int(pipeline.created_at * 1000),
                tags=parent_tags(pipeline, steps, key=key, version=__version__),
            )
        server.upload_text(
            parent.artifact_uri, PIPELINE_ARTIFACT, _pretty(pipeline), records.ARTIFACT_DIR
        )
        self.store.update_pipeline(
            pipeline.id, mlflow_run_id=parent.run_id, mlflow_experiment_id=parent.experiment_id
        )
        pipeline.mlflow_run_id = parent.run_id
        pipeline.mlflow_experiment_id = parent.experiment_id
        log.info("pipeline p%s: MLflow parent run %s", pipeline.id, parent.run_id)
        return parent.run_id

    def _nest_steps(
        self, server: TrackingServer, pipeline: Pipeline, parent: str, steps: Sequence[PipelineStep]
    ) -> None:
        """Nest each step's current record made before the parent existed (or found after a
        crash): a run step's run, a sweep step's parent. One not made yet is made under it."""
        run_ids = [s.run_id for s in steps if s.run_id is not None]
        pending = [i for i in run_ids if self._runs_nested.get(i) != parent]
        for run in self.store.runs_by_ids(pending) if pending else []:
            assert run.id is not None
            if run.mlflow_run_id is None:
                continue  # not made yet: it will be made under the parent
            if self.store.relay_cursors(run.id).get(PARENT_CURSOR) != parent:
                server.set_tag(run.mlflow_run_id, records.PARENT_TAG, parent)
                self.store.save_relay_cursors(run.id, {PARENT_CURSOR: parent})
            self._runs_nested[run.id] = parent
        names = {s.sweep_id: s.name for s in steps if s.sweep_id is not None}
        waiting = [i for i in names if self._sweeps_nested.get(i) != parent]
        for sweep_id, sweep in self.store.sweeps_by_ids(waiting).items() if waiting else []:
            if sweep.mlflow_run_id is None:
                continue  # its points' first "sweep" operation makes it; a later pass nests it
            tags = {
                records.PARENT_TAG: parent,
                PIPELINE_ID_TAG: str(pipeline.id),
                PIPELINE_STEP_TAG: names[sweep_id],
            }
            server.log_batch(sweep.mlflow_run_id, Batch(tags=tags))
            self._sweeps_nested[sweep_id] = parent

    def _settle(self, server: TrackingServer, pipeline: Pipeline, parent: str) -> None:
        """End the parent once the engine marked the pipeline ended and every step's record is
        complete; set it RUNNING again when a step runs once more (ended_at cleared)."""
        assert pipeline.id is not None
        if pipeline.ended_at is not None and pipeline.closed_at is None:
            if self.store.pipeline_ops_owed(pipeline.id):
                return  # a step's record is still being completed: a later pass ends it
            status = parent_status(pipeline.outcome)
            tags = {OUTCOME_TAG: pipeline.outcome or "UNKNOWN"}
            server.log_batch(parent, Batch(tags=tags))
            server.set_status(parent, status, int(pipeline.ended_at * 1000))
            self.store.update_pipeline(pipeline.id, closed_at=self.clock())
            log.info(
                "pipeline p%s ended %s; MLflow parent %s", pipeline.id, pipeline.outcome, status
            )
        elif pipeline.ended_at is None and pipeline.closed_at is not None:
            server.set_status(parent, records.RUNNING)
            self.store.update_pipeline(pipeline.id, closed_at=None)
            log.info("pipeline p%s: a step runs again; MLflow parent RUNNING", pipeline.id)

    # --- register steps --------------------------------------------------------------------

    def _promote_step(self, server: TrackingServer, pipeline: Pipeline, step: PipelineStep) -> None:
        assert step.id is not None
        if not self._due(("step", step.id)):
            return
        found = self._candidate(pipeline, step)
        if found is None:
            return  # its model run's record is still being completed
        if isinstance(found, str):
            self._end(step, RunState.FAILED, found)
            return
        run, register = found
        assert run.mlflow_run_id is not None
        metric = register.if_better.metric if register.if_better is not None else None
        mode: registry.Mode = register.if_better.mode if register.if_better is not None else "max"
        try:
            promotion = self.promote(
                self.uri,
                run.mlflow_run_id,
                register.artifact_path,
                register.name,
                register.alias,
                metric,
                mode,
            )
            reason = promotion_reason(promotion, metric)
            if pipeline.mlflow_run_id is not None:
                tags = promotion_tags(step.name, promotion, reason)
                try:
                    server.log_batch(pipeline.mlflow_run_id, Batch(tags=tags))
                except TrackingRejected as exc:  # the record is the registry's; the parent's
                    log.warning("pipeline p%s: promotion not tagged: %s", pipeline.id, exc)
        except TrackingRejected as exc:
            self._end(
                step,
                RunState.FAILED,
                f"cannot register run {run.id}'s model as {register.name}: {exc.message}",
            )
            return
        except TrackingUnreachable as exc:
            delay = self._wait(("step", step.id), refused=False)
            log.warning(
                "pipeline p%s: step %s not promoted yet (retry in %.0f s): %s",
                pipeline.id,
                step.name,
                delay,
                exc,
            )
            return
        self._waits.pop(("step", step.id), None)
        self._end(step, RunState.COMPLETED, reason, promotion_json(promotion))
        log.info("pipeline p%s: step %s: %s", pipeline.id, step.name, reason)

    def _candidate(
        self, pipeline: Pipeline, step: PipelineStep
    ) -> tuple[Run, Register] | str | None:
        """The model run and what to register it as; None to wait for its record; a string:
        why the step fails."""
        definition = definition_of(pipeline)
        declared = definition.steps.get(step.name) if definition is not None else None
        register = declared.promotion if declared is not None else None
        if register is None:
            return f"pipeline p{pipeline.id} has no register step {step.name!r} in its definition"
        if step.model_run_id is None:
            return f"{register.model} left no run whose model to register"
        try:
            run = self.store.get(step.model_run_id)
        except NotFound:
            return f"run {step.model_run_id} of {register.model} no longer exists"
        ops = self.store.tracking_ops(step.model_run_id)
        if run.mlflow_run_id is None:
            if any(op.kind == "create" and op.done_at is None for op in ops):
                return None  # its record is still being made
            failed = next((op.last_error for op in ops if op.kind == "create"), None)
            why = f" (its creation failed: {failed})" if failed else ""
            return f"run {run.id} of {register.model} has no MLflow record{why}"
        if any(op.done_at is None for op in ops):
            return None  # closing: its metrics and artifacts are not all on the server yet
        return run, register

    def _end(
        self, step: PipelineStep, state: RunState, reason: str, result_json: str | None = None
    ) -> None:
        assert step.id is not None
        self.store.end_step(step.id, state, reason, _ACTOR, result_json=result_json)
        if state != RunState.COMPLETED:
            log.warning("pipeline p%s: step %s %s: %s", step.pipeline_id, step.name, state, reason)

    def view(self, pipeline: Pipeline) -> Mapping[str, str | None]:
        """A pipeline's parent record for `hpcops show PIPELINE`: its ids and its page."""
        return {
            "mlflow_run_id": pipeline.mlflow_run_id,
            "mlflow_experiment_id": pipeline.mlflow_experiment_id,
            "mlflow_url": records.ui_url(
                self.uri, pipeline.mlflow_experiment_id, pipeline.mlflow_run_id
            ),
        }


def _pretty(pipeline: Pipeline) -> str:
    try:
        return json.dumps(json.loads(pipeline.definition_json), indent=2, sort_keys=False) + "\n"
    except ValueError:
        return pipeline.definition_json
