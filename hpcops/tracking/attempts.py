"""One MLflow record across a run's attempts (`retry:`, `hpcops retry`).

Every attempt's job logs into the same MLflow run (direct mode) or the same relay store (relay
mode), so metrics continue by step in one record; each attempt's Slurm figures and logs are kept
apart by its number (`slurm.attempt.<n>.*`, `hpcops/attempts/<n>/`). An "attempt" operation
logs an attempt that ended while the next is queued, a "reopen" the attempt an `hpcops retry`
follows, and the run's close every attempt's figures and the last attempt's logs.
"""

from __future__ import annotations

from hpcops.states import RunState
from hpcops.store import Run, Store
from hpcops.tracking import records
from hpcops.tracking.forward import RelayForwarder
from hpcops.tracking.jobfiles import JobFiles
from hpcops.tracking.records import Batch
from hpcops.tracking.server import TrackingServer


class AttemptRecords:
    def __init__(self, store: Store, files: JobFiles, forwarder: RelayForwarder) -> None:
        self.store = store
        self.files = files
        self.forwarder = forwarder

    def ended(self, server: TrackingServer, run: Run, number: int | None) -> None:
        """An attempt ended and the run's next one is queued: what the job logged so far (relay
        mode), that attempt's figures and logs kept apart by its number; the record stays
        open, for the next attempt's job logs into the same MLflow run: RUNNING again, since a
        job that logs directly may have ended it (MLflow's `with mlflow.start_run():` ends the
        run it resumed when the job's Python exits, also when Slurm stopped it)."""
        assert run.mlflow_run_id is not None
        if run.mlflow_relay_dir and run.mlflow_relay_run_id:
            self.forwarder.forward(server, run, final=True)
        server.set_status(run.mlflow_run_id, records.RUNNING)
        self._log(server, run, number)

    def reopened(self, server: TrackingServer, run: Run, number: int | None) -> None:
        """An ended run queued again by `hpcops retry`: its record RUNNING again, and the
        attempt that ended it logged as `attempt` logs one (a run of one attempt had none).
        MLflow keeps the end time its close set: UpdateRun cannot clear one (mlflow 3.17.2),
        and the next close sets the real one."""
        assert run.mlflow_run_id is not None
        server.set_status(run.mlflow_run_id, records.RUNNING)
        last = number - 1 if number is not None else run.attempts_ended
        self._log(server, run, last or None)

    def closing(self, run: Run, batch: Batch) -> Batch:
        """The closing batch with every attempt's figures, in the same request: an "attempt"
        operation given up on is made good here, and `hpcops show` and the record agree."""
        assert run.id is not None
        if run.attempts_ended > 1:
            for attempt in self.store.attempts(run.id):
                batch = batch.merged(records.attempt_batch(attempt))
        return batch

    def upload_last_logs(self, server: TrackingServer, run: Run) -> None:
        """At close, a run of several attempts: the last attempt's logs under its number too."""
        if run.attempts_ended > 1:
            self.files.upload_logs(server, run, records.attempt_artifact_dir(run.attempts_ended))

    def _log(self, server: TrackingServer, run: Run, number: int | None) -> None:
        assert run.id is not None and run.mlflow_run_id is not None
        attempt = next((a for a in self.store.attempts(run.id) if a.number == number), None)
        if attempt is None:
            return  # an operation written before attempts existed, or a run that never ran
        server.log_batch(run.mlflow_run_id, records.attempt_batch(attempt))
        artifact_dir = records.attempt_artifact_dir(attempt.number)
        if _logs_are_of(run, attempt.number):
            self.files.upload_logs(server, run, artifact_dir)
            return
        # A new attempt's job writes the same files (the run directory is the run's): once it
        # started, they are no longer this attempt's. Said, rather than mislabelled.
        assert run.mlflow_artifact_uri is not None
        note = (
            f"[hpcops: attempt {attempt.number}'s logs were not kept: the run's next attempt had "
            "started writing them before the tracking server took them]\n"
        )
        server.upload_text(run.mlflow_artifact_uri, "logs-missing.txt", note, artifact_dir)


def _logs_are_of(run: Run, number: int) -> bool:
    """Whether the run directory's logs are still attempt `number`'s: it is the run's last
    ended attempt, and the run's current attempt has not started. Slurm truncates --output
    only when a job starts, so the logs stay attempt `number`'s while the next job is being
    submitted, stages or pends: with retry.backoff_s 0 the engine submits it in the same tick
    the attempt ended, before this thread takes the logs. A staging job writes staging.log,
    never stdout.log (render.py). `started_at` is cleared when the next attempt is queued
    (retries.next_attempt_fields) and set when the daemon sees its job start; a job adopted
    RUNNING after a crash has none, hence the state too."""
    started = run.started_at is not None or run.state == RunState.RUNNING
    return run.attempts_ended == number and not started
