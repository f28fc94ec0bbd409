"""The daemon's tracking thread: every run's MLflow record, from an outbox in the database.

Each state change that owes the record something writes a TrackingOp row in the same transaction
(store.tracking_ops_for): "create" when a run is queued, "submitted" when Slurm took its job,
"close" when it ended; for a run with `retry:`, "attempt" when an attempt ended and the next is
queued (the record stays open), "reopen" when `hpcops retry` queued an ended run again (the
record goes back to RUNNING): one record across a run's attempts, each attempt's figures and
logs kept apart by its number (hpcops/tracking/attempts.py). This thread does them in order per
run, with back-off while the server does not answer, so the loop that follows Slurm and the
socket API never wait on the tracking server, and a record owed while it is down is completed
when it is back. kill -9 loses nothing: an operation is done again until it is marked done, and
every one is idempotent — creation counts its attempts first, and a retried creation first looks
the run up by its `hpcops.key`.

HTTP requests for one run's record (creation plus closing), against `mlflow server`:
  create     create_run (with its tags), log_batch (params), update (SCHEDULED), spec.yaml
  submitted  log_batch (Slurm job id, partition, cluster), job.sbatch
  close      log_batch (Slurm's figures as metrics and tags), stdout, stderr, update (status)
that is 10, whatever the number of figures, plus one experiment lookup per experiment per
daemon (tests/benchmarks/bench_tracking.py counts them). A run of several attempts costs 4 more
per "attempt" (update, log_batch, stdout, stderr), as many per "reopen" (update, and the same 3
for the attempt it follows), and 2 more at close (the last attempt's stdout and stderr under its
number; every attempt's figures ride in the closing batch).

A point of a sweep is recorded like any run, nested under its sweep's parent run, and owes the
parent "sweep" operations, in a lane of their own (hpcops/tracking/parents.py). With an
objective, its close reads the objective back (get_run) and its "sweep" operation logs the best
point on the parent (log_batch): 12 requests per point. The parent costs 5 (search, create_run,
params, sweep.yaml, points.json) and one more when it ends.

A pipeline's steps are recorded the same way, nested under the pipeline's parent run; that
parent, its end and the pipeline's register steps (promotions in the Model Registry) are not
outbox operations: each pass first brings every pipeline that still owes something up to date
from the database (hpcops/tracking/pipelines.py). The parent costs 3 (search, create_run,
pipeline.json), one more per sweep step (its parent nested) and per step record made before it,
and 2 when it ends; a promotion, the registry's 8-10 (docs/notes-stack.md) and one tag batch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpcops import __version__
from hpcops.backoff import Health, backoff_s
from hpcops.config import Config
from hpcops.errors import (
    HpcopsError,
    InvalidInput,
    NotFound,
    TrackingError,
    TrackingRejected,
    TrackingUnreachable,
)
from hpcops.rundir import RunDir
from hpcops.spec import parse_spec
from hpcops.states import RunState
from hpcops.store import Pipeline, Run, Store, Sweep, TrackingOp
from hpcops.store.tracking import SWEEP_OP
from hpcops.tracking import records, relay
from hpcops.tracking.attempts import AttemptRecords
from hpcops.tracking.forward import RelayForwarder
from hpcops.tracking.jobfiles import JobFiles
from hpcops.tracking.parents import SweepParents
from hpcops.tracking.pipelines import PipelineParents
from hpcops.tracking.records import Batch
from hpcops.tracking.server import TrackingServer, configure_client, load_mlflow

log = logging.getLogger(__name__)

_BACKOFF_MAX_S = 60.0
# How long the records wait, at a time, for a release step to end: a step that long (thousands
# of runs) shares the process with them again rather than leave them behind it.
_MAX_YIELD_S = 10.0
_MAX_REFUSALS = 5  # a request the server refused this often is given up, with its error kept
_IDLE_WAIT_S = 0.5


@dataclass(frozen=True)
class JobTracking:
    """What one submission of a run gets: the job's MLFLOW_ variables and the run fields that
    record where it logs (committed with the claim)."""

    mode: Literal["direct", "relay"]
    env: tuple[tuple[str, str], ...]
    fields: dict[str, Any]


ServerFactory = Callable[[str, Path | None], TrackingServer]


def _real_server(uri: str, artifact_root: Path | None) -> TrackingServer:
    return TrackingServer(uri, artifact_root=artifact_root)


class Tracker:
    def __init__(
        self,
        store: Store,
        config: Config,
        home: Path,
        *,
        server_factory: ServerFactory = _real_server,
        clock: Callable[[], float] = time.time,
    ) -> None:
        load_mlflow()  # before the daemon's threads start: see load_mlflow
        self.store = store
        self.cfg = config.tracking
        self.lab = config.lab
        self.home = home
        self.uri = self.cfg.uri_in(home)
        self.mode = self.cfg.mode_for(home)
        self.clock = clock
        self.health = Health()
        self.wake = threading.Event()
        self._no_release = threading.Event()  # clear while the loop releases runs
        self._no_release.set()
        self.cluster = self.cfg.cluster or _cluster_from_slurm_conf()
        roots = tuple(
            root for root in (config.run_root_in(home), self.cfg.relay_root) if root is not None
        )
        self._server_factory = server_factory
        self._server: TrackingServer | None = None
        self._next_relay_at = 0.0
        self.parents = SweepParents(store, lab=self.lab, home=home, clock=clock)
        self.pipelines = PipelineParents(store, lab=self.lab, home=home, uri=self.uri, clock=clock)
        self.files = JobFiles(roots, max_log_bytes=self.cfg.max_log_bytes)
        self.forwarder = RelayForwarder(store, roots)
        self.attempts = AttemptRecords(store, self.files, self.forwarder)
        configure_client(self.cfg.request_timeout_s)

    # --- asked by the loop (never waits on the server) ---------------------------------------

    @contextmanager
    def releasing(self) -> Iterator[None]:
        """Around the loop's release step: the records wait for it to end (each up to
        _MAX_YIELD_S). Both are Python threads of one process: a record made on MLflow's sqlite
        store is about 18 ms of CPU under the same interpreter lock, so 200 records made during
        a release of 200 runs slowed it by seconds. The jobs go into Slurm first; their records,
        which nothing in the release waits for (in direct mode a run waits for its record
        before it is released, not during), follow a moment later."""
        self._no_release.clear()
        try:
            yield
        finally:
            self._no_release.set()

    def may_release(self, run: Run, now: float) -> bool:
        """In direct mode a job must know its MLflow run before it starts: a queued run waits
        for its record a little (it is usually made within a second), but never for a server
        that does not answer — after `create_wait_s`, or at once while the server is down, it
        is released in relay mode instead, and nothing is lost."""
        if self.mode != "direct" or run.mlflow_run_id is not None:
            return True
        if not self.health.reachable:
            return True
        return now - run.created_at >= self.cfg.create_wait_s

    def job_tracking(self, run: Run, run_dir: Path) -> JobTracking:
        """The MLflow environment of the run's next submission. A run's relay store is made
        here, on shared scratch (a filesystem call, no server), for its first relayed job."""
        assert run.id is not None
        # A run's attempts share one record and, in relay mode, one relay store: an attempt
        # released while the server was down keeps relaying, and the next one goes on in the
        # same store (its cursors stay true), never half in each.
        relayed = run.mlflow_relay_dir is not None
        if self.mode == "direct" and run.mlflow_run_id and run.mlflow_experiment_id and not relayed:
            env = (
                ("MLFLOW_TRACKING_URI", self.uri),
                ("MLFLOW_RUN_ID", run.mlflow_run_id),
                ("MLFLOW_EXPERIMENT_ID", run.mlflow_experiment_id),
            )
            return JobTracking("direct", env, {"mlflow_relay_dir": None})
        if run.mlflow_relay_dir and run.mlflow_relay_run_id:
            # A later attempt: the store is the earlier attempts' job's, not touched again.
            # prepare() follows links and starts over a store without 0/meta.yaml, deleting
            # what they relayed that is not forwarded yet; a new relay run id would not match
            # the run's relay cursors either.
            store = relay.RelayStore(Path(run.mlflow_relay_dir), run.mlflow_relay_run_id)
        else:
            if self.cfg.relay_root is not None:
                root = self.cfg.relay_root / f"run-{run.id:06d}"
            else:
                root = run_dir / "mlflow"
            store = relay.prepare(root, run_name=run.name, user=run.owner)
        return JobTracking(
            "relay",
            relay.job_env(store),
            {"mlflow_relay_dir": str(store.root), "mlflow_relay_run_id": store.run_id},
        )

    def view(self, run: Run) -> dict[str, Any]:
        """The run's record for `hpcops show`: ids, the UI's URL, and what is still owed."""
        assert run.id is not None
        ops = self.store.tracking_ops(run.id)
        pending = [op for op in ops if op.done_at is None]
        failed = [op for op in ops if op.failed]
        error = next((op.last_error for op in pending if op.last_error), None)
        if error is None and failed:
            error = f"gave up on {failed[-1].kind}: {failed[-1].last_error}"
        return {
            "mlflow_run_id": run.mlflow_run_id,
            "mlflow_experiment_id": run.mlflow_experiment_id,
            "mlflow_url": records.ui_url(self.uri, run.mlflow_experiment_id, run.mlflow_run_id),
            "mlflow_tracking_uri": self.uri,
            "mlflow_relay_dir": run.mlflow_relay_dir,
            "tracking_pending": [op.kind for op in pending],
            "tracking_error": error,
        }

    def sweep_view(self, sweep: Sweep) -> dict[str, Any]:
        """A sweep's parent record for `hpcops show SWEEP`: its ids and its page in the UI."""
        return {
            "mlflow_run_id": sweep.mlflow_run_id,
            "mlflow_experiment_id": sweep.mlflow_experiment_id,
            "mlflow_url": records.ui_url(self.uri, sweep.mlflow_experiment_id, sweep.mlflow_run_id),
        }

    def pipeline_view(self, pipeline: Pipeline) -> dict[str, Any]:
        """A pipeline's parent record for `hpcops show PIPELINE`: its ids and its page."""
        return dict(self.pipelines.view(pipeline))

    # --- the thread --------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("tracking step failed; the next one tries again")
            self.wake.wait(_IDLE_WAIT_S)
            self.wake.clear()

    def step(self) -> None:
        now = self.clock()
        if now < self.health.retry_at:
            return
        try:
            server = self._connect()
            self.pipelines.sync(server)  # first: a step's record is then made under its parent
            self._flush(server, now)
            if now >= self._next_relay_at:
                self._next_relay_at = now + self.cfg.relay_interval_s
                self.forwarder.forward_all(server)
        except TrackingUnreachable as exc:
            self._failed(exc)
            return
        self._ok()

    def _connect(self) -> TrackingServer:
        if self._server is None:
            artifact_root = None if self.uri.startswith("http") else self.home / "mlartifacts"
            try:
                self._server = self._server_factory(self.uri, artifact_root)
            except TrackingError:
                raise
            except Exception as exc:  # the client could not even open the store
                raise TrackingUnreachable(f"cannot open {self.uri}: {exc}") from exc
        return self._server

    def _failed(self, exc: TrackingUnreachable) -> None:
        if self.health.failed(self.clock(), exc.message, first_s=1.0, max_s=_BACKOFF_MAX_S):
            log.warning("tracking server %s unreachable, retrying with back-off: %s", self.uri, exc)

    def _ok(self) -> None:
        if self.health.answered():
            log.info("tracking server %s reachable again", self.uri)
            self._next_relay_at = 0.0

    # --- the outbox --------------------------------------------------------------------------

    def _flush(self, server: TrackingServer, now: float) -> None:
        for op in self.store.tracking_due(now):
            assert op.id is not None
            self._no_release.wait(_MAX_YIELD_S)
            try:
                self._apply(server, op)
            except TrackingRejected as exc:
                self._refused(op, exc)
                continue
            except TrackingUnreachable as exc:
                # A parent's request that failed costs that parent a retry, not every other
                # run's record a wait: a server that is down fails the next one too. Likewise
                # a run's request that fails while the server answers (its artifact store
                # gives 500 for one file, say): that run's record waits, with a back-off, and
                # the others go on. Only an outage holds the whole outbox.
                if op.kind == SWEEP_OP or server.answers():
                    delay = backoff_s(op.attempts + 1, first_s=1.0, max_s=_BACKOFF_MAX_S)
                    log.warning(
                        "run %s: MLflow %s failed (retry in %.0f s): %s",
                        op.run_id,
                        op.kind,
                        delay,
                        exc,
                    )
                    self.store.tracking_retry(
                        op.id, not_before=self.clock() + delay, error=exc.message[:2000]
                    )
                    continue
                self.store.tracking_retry(op.id, not_before=0.0, error=exc.message[:2000])
                raise
            self.store.tracking_done(op.id)

    def _refused(self, op: TrackingOp, exc: TrackingRejected) -> None:
        assert op.id is not None
        attempts = op.attempts + 1
        if attempts >= _MAX_REFUSALS:
            log.error("run %s: giving up on MLflow %s: %s", op.run_id, op.kind, exc)
            self.store.tracking_done(op.id, error=exc.message[:2000], failed=True)
        else:
            delay = backoff_s(attempts, first_s=10.0, max_s=600.0)
            log.warning(
                "run %s: MLflow refused %s (retry in %.0f s): %s", op.run_id, op.kind, delay, exc
            )
            self.store.tracking_retry(
                op.id, not_before=self.clock() + delay, error=exc.message[:2000]
            )

    def _apply(self, server: TrackingServer, op: TrackingOp) -> None:
        assert op.id is not None
        attempt = self.store.tracking_attempt(op.id)
        run = self.store.get(op.run_id)
        if op.kind == "create":
            self._create(server, run, first_try=attempt.attempts == 1)
            return
        if op.kind == SWEEP_OP:
            self.parents.sync(server, run)
            return
        if run.mlflow_run_id is None or run.mlflow_artifact_uri is None:
            raise TrackingRejected(f"run {run.id} has no MLflow record: its creation failed")
        if op.kind == "submitted":
            self._submitted(server, run)
        elif op.kind == "close":
            self._close(server, run)
        elif op.kind == "attempt":
            self.attempts.ended(server, run, op.attempt)
        elif op.kind == "reopen":
            self.attempts.reopened(server, run, op.attempt)
        else:
            raise TrackingRejected(f"unknown tracking operation {op.kind!r}")

    def _create(self, server: TrackingServer, run: Run, *, first_try: bool) -> None:
        assert run.id is not None
        spec = parse_spec(run.spec_yaml, f"run {run.id}")
        if run.mlflow_run_id is None or run.mlflow_artifact_uri is None:
            experiment_id = server.experiment_id(run.experiment)
            key = records.instance_key(self.lab, self.home, run.id)
            # A point of a sweep is made under its parent when the parent exists (its "sweep"
            # operation came first); one made before is nested by a later one. A pipeline
            # step's run likewise under its pipeline's (hpcops/tracking/pipelines.py).
            parent = self.parents.known_parent(run) or self.pipelines.known_parent(run)
            # Only a retry can find a record an earlier attempt made before a crash.
            created = None if first_try else server.find_run(experiment_id, records.KEY_TAG, key)
            nested = False
            if created is None:
                created = server.create_run(
                    experiment_id,
                    name=run.name,
                    user=run.owner,
                    start_ms=int(run.created_at * 1000),
                    tags=records.creation_tags(
                        run,
                        spec,
                        key=key,
                        version=__version__,
                        data_versions=_data(run),
                        parent_run_id=parent,
                    ),
                )
                nested = parent is not None
            self.store.set_tracking_fields(
                run.id,
                mlflow_run_id=created.run_id,
                mlflow_experiment_id=created.experiment_id,
                mlflow_artifact_uri=created.artifact_uri,
            )
            if nested and parent is not None:
                self.parents.created_under(run, parent)
            run = self.store.get(run.id)
            if parent is not None and not nested:  # found after a crash: maybe not nested
                self.parents.nest(server, run, parent)
        assert run.mlflow_run_id is not None and run.mlflow_artifact_uri is not None
        server.log_batch(run.mlflow_run_id, Batch(params=records.params_of(spec)))
        if RunState(run.state) in (RunState.QUEUED, RunState.HELD, RunState.SUBMITTING):
            server.set_status(run.mlflow_run_id, records.SCHEDULED)
        server.upload_text(
            run.mlflow_artifact_uri, "spec.yaml", run.spec_yaml, records.ARTIFACT_DIR
        )
        if run.rerun_of_mlflow:
            self._link_original(server, run)

    def _link_original(self, server: TrackingServer, run: Run) -> None:
        """The other direction of a rerun's link: the original names its reruns."""
        assert run.rerun_of_mlflow is not None and run.mlflow_run_id is not None
        tags = {
            records.RERUN_BY_TAG: run.mlflow_run_id,
            f"{records.RERUN_BY_TAG}.{run.mlflow_run_id}": str(run.id),
        }
        try:
            server.log_batch(run.rerun_of_mlflow, Batch(tags=tags))
        except TrackingRejected as exc:  # the original is gone from the server: keep the rerun
            log.warning("run %s: cannot tag the original %s: %s", run.id, run.rerun_of_mlflow, exc)

    def _submitted(self, server: TrackingServer, run: Run) -> None:
        assert run.mlflow_run_id is not None and run.mlflow_artifact_uri is not None
        mode = "relay" if run.mlflow_relay_dir else "direct"
        tags = records.submission_tags(run, cluster=self.cluster, mode=mode)
        server.log_batch(run.mlflow_run_id, Batch(tags=tags))
        if run.run_dir:
            self.files.upload(
                server, run, RunDir(Path(run.run_dir)).script, max_bytes=self.cfg.max_log_bytes
            )

    def _close(self, server: TrackingServer, run: Run) -> None:
        assert run.id is not None
        assert run.mlflow_run_id is not None and run.mlflow_artifact_uri is not None
        if run.mlflow_relay_dir and run.mlflow_relay_run_id:
            self.forwarder.forward(server, run, final=True)
        if not RunState(run.state).is_terminal:
            # Retried by hand before this close was done: the "reopen" after it logs the
            # attempt that ended, and the record stays open.
            return
        end_ms = int((run.ended_at or self.clock()) * 1000)
        batch = self.attempts.closing(run, records.closing_batch(run, end_ms=end_ms))
        server.log_batch(run.mlflow_run_id, batch)
        self.files.upload_logs(server, run, records.ARTIFACT_DIR)
        self.attempts.upload_last_logs(server, run)
        status = records.mlflow_status(RunState(run.state))
        server.set_status(run.mlflow_run_id, status, end_ms)
        if run.sweep_id is not None:
            self.parents.read_objective(server, run)

    # --- rerun -------------------------------------------------------------------------------

    def recorded_spec(self, mlflow_run_id: str) -> tuple[str, dict[str, str]]:
        """The spec a run on the server was made from (its `hpcops/spec.yaml`), and its tags.

        Asked by the API thread for a rerun of a record this daemon does not hold; one request
        at most `request_timeout_s` long, never the loop's business."""
        server = self._connect()
        try:
            record = server.get_run(mlflow_run_id)
            text = server.read_text_artifact(record.artifact_uri, records.SPEC_ARTIFACT)
        except TrackingRejected as exc:
            raise NotFound(
                f"no hpcops record for MLflow run {mlflow_run_id} on {self.uri}: {exc.message}"
            ) from exc
        except TrackingUnreachable as exc:
            raise HpcopsError(
                f"cannot read MLflow run {mlflow_run_id}: the tracking server does not answer "
                f"({exc.message}); try again later"
            ) from exc
        if not text.strip():
            raise InvalidInput(f"MLflow run {mlflow_run_id} has an empty hpcops/spec.yaml")
        return text, record.tags


def _cluster_from_slurm_conf() -> str | None:
    path = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    try:
        return records.cluster_name(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def _data(run: Run) -> dict[str, str]:
    """Each data target's version (DVC's md5), by its path: tagged hpcops.data.<path>."""
    return {item["path"]: item["md5"] for item in json.loads(run.data_json or "[]")}
