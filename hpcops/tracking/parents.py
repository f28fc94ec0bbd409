"""A sweep's MLflow parent run: one per sweep, its points' records nested under it.

The parent holds what is the sweep's own: the spec's base params and the sweep's definition
(`sweep.kind`, `sweep.points`, `sweep.seed`, `sweep.objective`, `sweep.max_parallel`), the
spec (`hpcops/sweep.yaml`) and the points it drew (`hpcops/points.json`), and, as points end,
the best point so far (metric `best_<objective>`, step = points ended by then; tags
`hpcops.best_run`, `hpcops.best_point`, `hpcops.best_mlflow_run`). It ends when every point
has: FINISHED if any point completed, else FAILED if any failed, else KILLED; a point rerun
afterwards sets it RUNNING again until that rerun ends.

Each point's run owes its parent two outbox operations ("sweep", hpcops/store/tracking.py):
one before its record is created and one after it is closed. They are a lane of their own, so
a parent the server refuses costs that sweep's parent and nothing else: the points' records and
every other run's go on, and the parent's operation is retried with the outbox's back-off.
Every operation brings the parent up to date from the database (the truth about the points), so
doing one twice, or one for several points, does no harm.

Idempotent creation: the parent is made only by `ensure`, which first looks it up by its
`hpcops.key` (the lab, the daemon's home and the sweep id) and stores its id only after its
params and artifacts are on the server. A crash between the server's creation and the stored id
finds the same run again; it never makes a second parent.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hpcops import __version__
from hpcops.errors import NotFound, TrackingRejected
from hpcops.states import RunState
from hpcops.store import Run, Store, Sweep
from hpcops.store.tracking import BestPoint, SweepStanding
from hpcops.tracking import records
from hpcops.tracking.records import Batch, MetricPoint
from hpcops.tracking.server import TrackingServer
from hpcops.yamlio import YamlProblems, read_yaml

log = logging.getLogger(__name__)

PARENT_TAG = records.PARENT_TAG
SWEEP_ID_TAG = "hpcops.sweep_id"
KIND_TAG = "hpcops.kind"
BEST_RUN_TAG = "hpcops.best_run"
BEST_POINT_TAG = "hpcops.best_point"
BEST_MLFLOW_TAG = "hpcops.best_mlflow_run"
SWEEP_ARTIFACT = "sweep.yaml"
POINTS_ARTIFACT = "points.json"
# The parent a point's record was last nested under, kept with the run's relay cursors (the
# tracker's per-run progress): a record created before its parent existed is nested later.
PARENT_CURSOR = "sweep:parent"
_ACTOR = "daemon"
_TAG_MAX = 5000


def sweep_key(lab: str, home: Path, sweep_id: int) -> str:
    """The parent's `hpcops.key`: never a run's key, never another daemon's sweep's."""
    return f"{records.instance_key(lab, home, sweep_id)}:sweep"


# --- what the parent holds (pure) --------------------------------------------------------------


def _definition(sweep: Sweep) -> dict[str, Any]:
    """The sweep's spec as plain data (the stored spec is hpcops' own canonical YAML); an
    unreadable one gives nothing rather than holding up the record."""
    try:
        data = read_yaml(sweep.spec_yaml)
    except YamlProblems as exc:
        log.warning("sweep %s: its stored spec does not read: %s", sweep.id, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def parent_params(sweep: Sweep) -> dict[str, str]:
    """The spec's base params, and the sweep's definition as `sweep.*` params."""
    spec = _definition(sweep)
    params = {
        str(k): records.param_text(v)
        for k, v in _mapping(spec.get("params")).items()
        if isinstance(v, str | int | float | bool)
    }
    params["sweep.kind"] = sweep.kind
    params["sweep.points"] = str(sweep.n_points)
    seed = _mapping(_mapping(spec.get("sweep")).get("random")).get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        params["sweep.seed"] = str(seed)
    if sweep.objective_metric:
        params["sweep.objective"] = f"{sweep.objective_metric} {sweep.objective_mode or 'max'}"
    if sweep.max_parallel is not None:
        params["sweep.max_parallel"] = str(sweep.max_parallel)
    return params


def parent_tags(
    sweep: Sweep, *, key: str, version: str, rerun_of_mlflow: str | None = None
) -> dict[str, str]:
    """Tags the parent is created with: the spec's own tags under hpcops' (which win)."""
    assert sweep.id is not None
    tags = {
        str(k): str(v)[:_TAG_MAX]
        for k, v in _mapping(_definition(sweep).get("tags")).items()
        if isinstance(v, str | int | float | bool)
    }
    tags.update(
        {
            "mlflow.user": sweep.owner,
            "mlflow.runName": sweep.name,
            records.KEY_TAG: key,
            SWEEP_ID_TAG: str(sweep.id),
            KIND_TAG: "sweep",
            "hpcops.owner": sweep.owner,
            "hpcops.version": version,
        }
    )
    if sweep.rerun_of_sweep is not None:
        tags["hpcops.rerun_of_sweep"] = str(sweep.rerun_of_sweep)
    if rerun_of_mlflow:
        tags[records.RERUN_OF_TAG] = rerun_of_mlflow
    return tags


def parent_status(states: Iterable[str]) -> str:
    """The ended parent's status: FINISHED if any point completed, else FAILED if any point
    failed (FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, UNKNOWN), else KILLED (cancelled or
    preempted)."""
    ended = [RunState(s) for s in states]
    if RunState.COMPLETED in ended:
        return records.FINISHED
    if any(records.mlflow_status(s) == records.FAILED for s in ended):
        return records.FAILED
    return records.KILLED


def best_batch(
    sweep: Sweep, best: BestPoint, *, ended_before: int, ended_now: int, now_ms: int
) -> Batch:
    """The best point so far, on the parent: its value at step = the points ended by the time
    the point asked about ended and, when more have ended since (its objective was read after
    theirs), at step = the points ended now too. MLflow shows a metric's value at its highest
    step: without the second point, a best that arrived late would be hidden behind the value
    logged for a later-ended, worse point (seen in the 3x3 grid test: best_score 3.3, not 4.0)."""
    assert sweep.objective_metric is not None
    try:
        point = json.loads(sweep.points_json)[best.index]
    except (ValueError, IndexError, TypeError, KeyError):
        point = None
    tags = {
        BEST_RUN_TAG: str(best.run_id),
        BEST_POINT_TAG: json.dumps(point, sort_keys=True)[:_TAG_MAX],
    }
    if best.mlflow_run_id:
        tags[BEST_MLFLOW_TAG] = best.mlflow_run_id
    name = f"best_{sweep.objective_metric}"
    steps = sorted({ended_before, max(ended_before, ended_now)})
    metrics = [MetricPoint(name, best.objective, now_ms, step) for step in steps]
    return Batch(metrics=metrics, tags=tags)


# --- the parent on the server ------------------------------------------------------------------


class SweepParents:
    """The tracking thread's work on sweeps' parents (called by the Tracker, on its thread)."""

    def __init__(
        self, store: Store, *, lab: str, home: Path, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.lab = lab
        self.home = home
        self.clock = clock

    def _sweep(self, run: Run) -> Sweep:
        assert run.sweep_id is not None
        try:
            return self.store.get_sweep(run.sweep_id)
        except NotFound as exc:
            raise TrackingRejected(f"run {run.id}: {exc.message}") from exc

    def known_parent(self, run: Run) -> str | None:
        """The parent a point's record is created under, if it exists yet (no request)."""
        if run.sweep_id is None:
            return None
        return self._sweep(run).mlflow_run_id

    def created_under(self, run: Run, parent_run_id: str) -> None:
        """The point's record was created nested under this parent."""
        assert run.id is not None
        self.store.save_relay_cursors(run.id, {PARENT_CURSOR: parent_run_id})

    def ensure(self, server: TrackingServer, sweep: Sweep) -> str:
        """The sweep's parent run id, the parent made first if it is not recorded yet.

        Found by its key before it is made; its id is stored only once its params and
        artifacts are on the server, so whatever an interrupted attempt left is found and
        completed (every step here may be done twice)."""
        assert sweep.id is not None
        if sweep.mlflow_run_id is not None:
            return sweep.mlflow_run_id
        experiment_id = server.experiment_id(sweep.experiment)
        key = sweep_key(self.lab, self.home, sweep.id)
        parent = server.find_run(experiment_id, records.KEY_TAG, key)
        if parent is None:
            rerun_of = None
            if sweep.rerun_of_sweep is not None:
                try:
                    rerun_of = self.store.get_sweep(sweep.rerun_of_sweep).mlflow_run_id
                except NotFound:
                    rerun_of = None
            parent = server.create_run(
                experiment_id,
                name=sweep.name,
                user=sweep.owner,
                start_ms=int(sweep.created_at * 1000),
                tags=parent_tags(sweep, key=key, version=__version__, rerun_of_mlflow=rerun_of),
            )
        try:
            server.log_batch(parent.run_id, Batch(params=parent_params(sweep)))
        except TrackingRejected as exc:  # a value the server will never take: the parent
            log.warning("sweep %s: parent's params refused: %s", sweep.id, exc)  # goes on
        server.upload_text(
            parent.artifact_uri, SWEEP_ARTIFACT, sweep.spec_yaml, records.ARTIFACT_DIR
        )
        server.upload_text(
            parent.artifact_uri, POINTS_ARTIFACT, sweep.points_json, records.ARTIFACT_DIR
        )
        self.store.update_sweep(
            sweep.id, mlflow_run_id=parent.run_id, mlflow_experiment_id=parent.experiment_id
        )
        log.info("sweep %s: MLflow parent run %s", sweep.id, parent.run_id)
        return parent.run_id

    def sync(self, server: TrackingServer, run: Run) -> None:
        """A "sweep" operation of a point: the parent made if missing, the point nested under
        it, the best point ranked (after the point ended), the parent ended or reopened."""
        assert run.id is not None and run.sweep_id is not None
        sweep = self._sweep(run)
        if sweep.mlflow_run_id is None:
            parent = self.ensure(server, sweep)
            sweep = self._sweep(run)
        else:
            parent = sweep.mlflow_run_id
        self.nest(server, run, parent)
        if not RunState(run.state).is_terminal:
            # Queued: nothing to rank; a sweep that had ended runs again (a point's rerun).
            if sweep.closed_at is not None:
                self._reopen(server, sweep, parent)
            return
        standing = self.store.sweep_standing(run.sweep_id, run.id, sweep.objective_mode)
        if sweep.objective_metric:
            self._rank(server, sweep, parent, standing)
        self._settle(server, sweep, parent, standing)

    def nest(self, server: TrackingServer, run: Run, parent: str) -> None:
        """Nest a point's record made before its parent existed (or found after a crash)."""
        assert run.id is not None
        if run.mlflow_run_id is None:
            return  # not made yet: it will be made under the parent
        if self.store.relay_cursors(run.id).get(PARENT_CURSOR) == parent:
            return
        server.set_tag(run.mlflow_run_id, PARENT_TAG, parent)
        self.created_under(run, parent)

    def _rank(
        self, server: TrackingServer, sweep: Sweep, parent: str, standing: SweepStanding
    ) -> None:
        assert sweep.id is not None
        best = standing.best
        if best is None:
            if sweep.best_run_id is not None or sweep.best_value is not None:
                self.store.update_sweep(sweep.id, best_run_id=None, best_value=None)
            return
        now_ms = int(self.clock() * 1000)
        before = standing.ended_before or standing.ended
        batch = best_batch(
            sweep, best, ended_before=before, ended_now=standing.ended, now_ms=now_ms
        )
        server.log_batch(parent, batch)
        if (sweep.best_run_id, sweep.best_value) != (best.run_id, best.objective):
            self.store.update_sweep(sweep.id, best_run_id=best.run_id, best_value=best.objective)

    def _settle(
        self, server: TrackingServer, sweep: Sweep, parent: str, standing: SweepStanding
    ) -> None:
        """End the parent when every point has ended (and every point's record is closed,
        so the best point is final); set it RUNNING again when a point runs once more."""
        assert sweep.id is not None
        all_ended = standing.points >= sweep.n_points and standing.ended == standing.points
        if all_ended and sweep.closed_at is None:
            if self.store.sweep_closes_owed(sweep.id):
                return  # that point's own "sweep" operation ends the parent
            end = standing.last_end or self.clock()
            status = parent_status(standing.states)
            server.set_status(parent, status, int(end * 1000))
            self.store.update_sweep(sweep.id, closed_at=self.clock())
            log.info("sweep %s: every point ended; MLflow parent %s", sweep.id, status)
        elif not all_ended and sweep.closed_at is not None:
            self._reopen(server, sweep, parent)

    def _reopen(self, server: TrackingServer, sweep: Sweep, parent: str) -> None:
        assert sweep.id is not None
        server.set_status(parent, records.RUNNING)
        self.store.update_sweep(sweep.id, closed_at=None)
        log.info("sweep %s: a point runs again; MLflow parent RUNNING", sweep.id)

    def read_objective(self, server: TrackingServer, run: Run) -> None:
        """In a point's close: its objective metric's latest value, from its record on the
        server (in relay mode after the last copy), stored on the run. No such metric (or not
        a number): None, and the point is not ranked."""
        assert run.id is not None and run.mlflow_run_id is not None
        if run.slurm_job_id is None:
            return  # never ran (cancelled or refused before Slurm took it): nothing logged
        metric = self._sweep(run).objective_metric
        if not metric:
            return
        try:
            value = server.get_run(run.mlflow_run_id).metrics.get(metric)
        except TrackingRejected as exc:
            log.warning("run %s: cannot read its objective %s: %s", run.id, metric, exc)
            value = None
        if value is not None and math.isnan(value):
            value = None
        if value != run.objective:
            self.store.transition(run.id, None, actor=_ACTOR, objective=value)
