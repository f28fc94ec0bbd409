"""Reading runs, sweeps and pipelines: `ls`, `show`, `why`, `history`, `logs`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcops import policy
from hpcops.access import authorize
from hpcops.api import attempts
from hpcops.api.handlers.base import Daemon, Handler, Request, run_id
from hpcops.api.params import (
    ListParams,
    LogsParams,
    PipelineId,
    RunParams,
    SweepId,
    TargetParams,
)
from hpcops.api.views import StepRecords, event_view, pipeline_view, run_view, sweep_view
from hpcops.engine.pipelines import definition_of
from hpcops.errors import SlurmUnreachable
from hpcops.render import STAGING_LOG
from hpcops.rundir import PROGRESS_MAX_BYTES, STAGING_PROGRESS, RunDir, parse_progress
from hpcops.states import RunState
from hpcops.store import PipelineStep, Run
from hpcops.transport.base import TransportError

MAX_LOG_CHUNK_BYTES = 1024 * 1024
_MAX_PROGRESS_BYTES = 256 * 1024

# States in which a run waits for something; `ls` and `show` say what.
WAITING = {
    RunState.QUEUED,
    RunState.HELD,
    RunState.SUBMITTING,
    RunState.STAGING,
    RunState.PENDING,
}


class RunHandlers:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def methods(self) -> dict[str, Handler]:
        return {
            "list": self.list_runs,
            "show": self.show,
            "why": self.why,
            "history": self.history,
            "logs": self.logs,
        }

    def list_runs(self, req: Request) -> list[dict[str, Any]]:
        """Runs in the lab's queue order: in Slurm, then queued in release order, then held;
        with `states`, those states newest first. With `sweeps`, the points of a sweep are one
        row for the sweep, where its first listed point is: a sweep is listed when one of its
        points is in `states`, with all its points' counts; the runs of a pipeline's steps
        likewise one row for the pipeline, with each step's state; `limit` counts rows."""
        authorize("read", req.caller, req.role)
        params = ListParams.parse(req.params)
        store = self.daemon.store
        decision = self.daemon.engine.status().decision
        limit = params.limit
        if not params.sweeps:
            runs = store.list_runs(params.states, limit=limit, newest_first=True)
            return [self._view(r) for r in queue_order(runs, decision)]
        # A sweep's points make one row: read more runs until there are `limit` rows.
        fetch = limit
        while True:
            runs = store.list_runs(params.states, limit=fetch, newest_first=True)
            slots = by_sweep(queue_order(runs, decision))
            if fetch is None or limit is None or len(slots) >= limit or len(runs) < fetch:
                break
            fetch *= 2
        return self._rows(slots[:limit] if limit is not None else slots)

    def _rows(self, slots: list[list[Run]]) -> list[dict[str, Any]]:
        """A row per slot: a run's view, or its sweep's with why its first waiting point waits
        (one engine.why per sweep), or its pipeline's with why its first waiting run waits."""
        store = self.daemon.store
        ids = {
            slot[0].sweep_id
            for slot in slots
            if slot[0].sweep_id is not None and slot[0].pipeline_id is None
        }
        sweeps, counts = store.sweeps_by_ids(ids), store.sweep_counts(ids)
        pipeline_ids = {slot[0].pipeline_id for slot in slots if slot[0].pipeline_id is not None}
        steps = store.pipeline_steps(pipeline_ids)
        rows: list[dict[str, Any]] = []
        for slot in slots:
            if slot[0].pipeline_id is not None:
                rows.append(self._pipeline_row(slot, steps[slot[0].pipeline_id]))
                continue
            number = slot[0].sweep_id
            if number is None or number not in sweeps:
                rows += [self._view(run) for run in slot]
                continue
            row = sweep_view(sweeps[number], counts.get(number, {}))
            waiting = next((r for r in slot if RunState(r.state) in WAITING), None)
            row["wait_reason"] = (
                None
                if waiting is None
                else f"point {waiting.sweep_index}: {self.daemon.engine.why(waiting)}"
            )
            rows.append(row)
        return rows

    def _pipeline_row(self, slot: list[Run], steps: list[PipelineStep]) -> dict[str, Any]:
        """A pipeline's row in `ls`: its steps' states, and why its first waiting run waits (a
        run of an open step first: the others all wait for the steps before them)."""
        number = slot[0].pipeline_id
        assert number is not None  # a pipeline's slot
        pipeline = self.daemon.store.get_pipeline(number)
        states = self.daemon.engine.pipeline_step_states(number)
        row = pipeline_view(pipeline, definition_of(pipeline), steps, states)
        waiting = min(
            (r for r in slot if RunState(r.state) in WAITING),
            key=lambda r: r.gated,  # stable: the first in queue order among equals
            default=None,
        )
        row["wait_reason"] = (
            None
            if waiting is None
            else f"{waiting.pipeline_step}: {self.daemon.engine.why(waiting)}"
        )
        return row

    def _pipeline(self, number: int) -> dict[str, Any]:
        """`show p3`: every step's definition and figures; why a waiting step waits."""
        store, engine = self.daemon.store, self.daemon.engine
        pipeline = store.get_pipeline(number)
        steps = store.pipeline_steps([number])[number]
        states = engine.pipeline_step_states(number)
        runs = {run_id(r): r for r in store.runs_by_ids([s.run_id for s in steps if s.run_id])}
        sweep_ids = [s.sweep_id for s in steps if s.sweep_id is not None]
        records = StepRecords(
            runs=runs,
            sweeps=store.sweeps_by_ids(sweep_ids),
            counts=store.sweep_counts(sweep_ids),
            points={i: store.sweep_runs(i) for i in sweep_ids},
        )
        definition = definition_of(pipeline)
        view = pipeline_view(pipeline, definition, steps, states, records=records)
        by_name = {s.name: s for s in steps}
        for row in view["steps"]:
            row["wait_reason"] = self._step_wait(row, by_name[row["name"]], states, records)
        return view

    def _step_wait(
        self,
        row: dict[str, Any],
        step: PipelineStep,
        states: dict[str, RunState],
        records: StepRecords,
    ) -> str | None:
        """Why a waiting step waits: the steps before it that have not completed, or once it
        is open, why its run (a sweep's first waiting point) waits in the lab's queue."""
        if RunState(row["state"]) not in WAITING:
            return None
        if step.opened_at is None:
            before = [p for p in row["after"] if states.get(p) is not RunState.COMPLETED]
            if before:
                return f"waits for {', '.join(before)}"
        points = records.points.get(step.sweep_id or 0, [])
        run = records.runs.get(step.run_id or 0) or next(
            (r for r in points if RunState(r.state) in WAITING), None
        )
        return None if run is None else self.daemon.engine.why(run)

    def show(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        store = self.daemon.store
        target = TargetParams.parse(req.params).run
        if isinstance(target, PipelineId):
            return self._pipeline(target.number)
        if isinstance(target, SweepId):
            return self._sweep(target.number)
        run = store.get(target)
        view = self._view(run, detail=True)
        view["attempts"] = attempts.attempts_view(run, store.attempts(target))
        view["staging"] = self._staging_progress(run) if run.data_json else None
        view["schedule_name"] = (
            store.get_schedule(run.schedule_id).name if run.schedule_id else None
        )
        view.update(self._tracking_view(run))
        return view

    def _sweep(self, number: int) -> dict[str, Any]:
        store = self.daemon.store
        sweep = store.get_sweep(number)
        counts = store.sweep_counts([number]).get(number, {})
        runs = store.sweep_runs(number)
        view = sweep_view(sweep, counts, points=runs)
        # which attempt each point's latest run is on, as `ls` says it of a run
        by_id = {run_id(r): r for r in runs}
        for point in view["points"]:
            run = by_id[point["run_id"]]
            point["attempt_number"] = attempts.attempt_number(run)
            point["max_attempts"] = run.max_attempts
        return view

    def why(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        run = self.daemon.store.get(RunParams.parse(req.params).run)
        return {"id": run.id, "state": run.state, "why": self.daemon.engine.why(run)}

    def history(self, req: Request) -> list[dict[str, Any]]:
        authorize("read", req.caller, req.role)
        return [event_view(e) for e in self.daemon.store.events(RunParams.parse(req.params).run)]

    def logs(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        params = LogsParams.parse(req.params)
        run = self.daemon.store.get(params.run)
        offset, stream = params.offset, params.stream
        max_bytes = max(1, min(params.max_bytes, MAX_LOG_CHUNK_BYTES))
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
                chunk = self.daemon.files.read_chunk(path, offset, max_bytes)
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

    def _view(self, run: Run, *, detail: bool = False) -> dict[str, Any]:
        """The run's view with why it waits, and which attempt it is on."""
        view = run_view(run, detail=detail)
        view["attempt_number"] = attempts.attempt_number(run)
        view["max_attempts"] = run.max_attempts
        waiting = RunState(run.state) in WAITING
        view["wait_reason"] = self.daemon.engine.why(run) if waiting else None
        return view

    def _staging_progress(self, run: Run) -> dict[str, Any] | None:
        """The stager's progress file ({"targets": {path: {phase, files_done, ...}}}), if any."""
        if not run.run_dir:
            return None
        try:
            path = Path(run.run_dir) / STAGING_PROGRESS
            chunk = self.daemon.files.read_chunk(path, 0, PROGRESS_MAX_BYTES + 1)
        except (TransportError, OSError):
            return None
        # The job writes it: bounded in size and depth before it is parsed (rundir.py).
        return parse_progress(chunk.data) if chunk.data else None

    def _tracking_view(self, run: Run) -> dict[str, Any]:
        """The run's MLflow record for `show` (read from the database: no server call)."""
        tracker = self.daemon.tracker
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


def queue_order(runs: list[Run], decision: policy.Decision | None) -> list[Run]:
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


def by_sweep(runs: list[Run]) -> list[list[Run]]:
    """The runs in their order, a sweep's points together where its first one is, and a
    pipeline's runs (its sweep steps' points too) together where its first one is."""
    slots: list[list[Run]] = []
    of_group: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        if run.pipeline_id is not None:
            key = ("pipeline", run.pipeline_id)
        elif run.sweep_id is not None:
            key = ("sweep", run.sweep_id)
        else:
            slots.append([run])
            continue
        slot = of_group.get(key)
        if slot is None:
            slot = of_group[key] = []
            slots.append(slot)
        slot.append(run)
    return slots
