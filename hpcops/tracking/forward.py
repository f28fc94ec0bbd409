"""What a job without network logged into its relay store, forwarded to its run's record: every
`relay_interval_s` for the runs still relaying, and a last time when an attempt or the run ends.
How far each run's store has been read is kept in the database (its relay cursors), so a
restart neither loses nor repeats a value; the store's files are read beneath the relay root
without following links (hpcops/tracking/relay.py reads them)."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hpcops.backoff import backoff_s
from hpcops.errors import TrackingRejected, TrackingUnreachable
from hpcops.states import RunState
from hpcops.store import Run, Store
from hpcops.tracking import records, relay
from hpcops.tracking.records import Batch, MetricPoint
from hpcops.tracking.server import TrackingServer
from hpcops.transport.beneath import UnsafeFile, anchor, copy_beneath

log = logging.getLogger(__name__)

# A relayed artifact is copied before upload (from a link-free handle); one larger than this is
# left out with a warning rather than filling the daemon's disk.
_ARTIFACT_MAX_BYTES = 4 * 1024**3
# A last read of a store that still grows as it is read (a later attempt's job already writing
# it) ends here, with an error; 1000 passes are 100M points.
_FINAL_MAX_PASSES = 1000


class RelayForwarder:
    def __init__(
        self, store: Store, roots: tuple[Path, ...], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.roots = roots
        self.clock = clock
        # Relayed files whose copy failed, by (run, cursor): (failures, when to try again). Held
        # back from the passes until then, so one file that keeps failing (4 GB read again and
        # again) takes neither a pass's artifact budget nor the files listed after it.
        self._copy_failed: dict[tuple[int, str], tuple[int, float]] = {}

    def forward_all(self, server: TrackingServer) -> None:
        """What is new in every relaying run's store; one run's failure costs only that run."""
        for run in self.store.relaying():
            try:
                self.forward(server, run, final=False)
            except TrackingRejected as exc:
                log.warning("run %s: relay refused by the server: %s", run.id, exc)
            except TrackingUnreachable as exc:
                if not server.answers():
                    raise  # an outage: the tracker backs off, and every run waits for it
                # This run's request, not the server (its artifact store failing one file):
                # its cursors stay where they are, and the next pass tries again.
                log.warning("run %s: relay failed, the next pass tries again: %s", run.id, exc)

    def forward(self, server: TrackingServer, run: Run, *, final: bool) -> None:
        """What is new in the run's relay store. `final`: the job has ended, and no pass comes
        after this one (an ended run is not relayed again): passes, each bounded as one while
        the job runs is, until the store is read to its end."""
        assert run.id is not None
        passes = _FINAL_MAX_PASSES if final else 1
        failed_now: set[str] = set()  # tried once in this read: not again in its next passes
        try:
            for _ in range(passes):
                if not self._pass(server, run, final=final, failed_now=failed_now):
                    return
            if final:
                log.error(
                    "run %s: its relay store holds more after %d passes; the rest is not forwarded",
                    run.id,
                    passes,
                )
        finally:
            if final:  # the run's last read: what it held back is not tried again
                for key in [k for k in self._copy_failed if k[0] == run.id]:
                    del self._copy_failed[key]

    def _pass(self, server: TrackingServer, run: Run, *, final: bool, failed_now: set[str]) -> bool:
        """One pass; whether it left more for another (and moved on: never the same again)."""
        assert run.id is not None and run.mlflow_run_id is not None
        assert run.mlflow_relay_dir is not None and run.mlflow_relay_run_id is not None
        assert run.mlflow_artifact_uri is not None
        store = relay.RelayStore(Path(run.mlflow_relay_dir), run.mlflow_relay_run_id)
        cursors = self.store.relay_cursors(run.id)
        try:
            root, run_dir = anchor(self.roots, store.run_dir)
            now = self.clock()
            held_back = failed_now | {
                key
                for (run_id, key), (_, retry_at) in self._copy_failed.items()
                if run_id == run.id and retry_at > now
            }
            delta = relay.collect(root, run_dir, cursors, final=final, held_back=held_back)
        except (UnsafeFile, OSError) as exc:
            # The store is the job's: one it made unreadable (chmod 000, a link) or that NFS
            # lost (ESTALE, EIO) costs this run only this pass (the next tries again while the
            # job runs; the last one's, at an attempt's end or the run's, is lost with this
            # warning), never the rest of its record (the figures, logs and status an
            # "attempt" or "close" logs after this) nor another run's: raised, it held the
            # outbox's oldest operation, and every run's record behind it, for ever.
            log.warning("run %s: cannot read its relay store: %s", run.id, exc)
            return False
        if delta.batch:
            self.log(server, run, delta.batch)
        if delta.cursors:  # kept now: an upload that fails below does not send the batch again
            self.store.save_relay_cursors(run.id, delta.cursors)
        moved = bool(delta.cursors)
        for artifact in delta.artifacts:
            failure = (run.id, artifact.cursor)
            if self._upload(server, run, root, artifact):
                self.store.save_relay_cursors(run.id, {artifact.cursor: artifact.signature})
                self._copy_failed.pop(failure, None)
                moved = True
            else:
                failed_now.add(artifact.cursor)
                failures = self._copy_failed.get(failure, (0, 0.0))[0] + 1
                retry_at = self.clock() + backoff_s(failures, first_s=30.0, max_s=3600.0)
                self._copy_failed[failure] = (failures, retry_at)
                moved = True  # the next pass of a last read takes what it held back
        if (
            not final
            and run.state == RunState.RUNNING.value
            and cursors.get("status") != records.RUNNING
        ):
            server.set_status(run.mlflow_run_id, records.RUNNING)
            self.store.save_relay_cursors(run.id, {"status": records.RUNNING})
        if delta.more and not moved:  # a pass that took nothing: the next would take nothing
            log.warning("run %s: its relay store holds more, but this pass took none", run.id)
        return delta.more and moved

    def _upload(self, server: TrackingServer, run: Run, root: Path, item: relay.Artifact) -> bool:
        """One relayed file onto the record; whether it is done with (uploaded, or left out for
        good), or to be tried again by the next pass (a copy that failed)."""
        assert run.mlflow_artifact_uri is not None
        name = item.path.name
        with tempfile.TemporaryDirectory(prefix="hpcops-relay-") as tmp:
            copy = Path(tmp) / name
            try:
                copy_beneath(root, item.path, copy, max_bytes=_ARTIFACT_MAX_BYTES, whole=True)
            except UnsafeFile as exc:  # a link or too large: until it changes, left out
                log.warning("run %s: relayed artifact %s skipped: %s", run.id, name, exc)
                return True
            except OSError as exc:  # unreadable or gone for now (NFS): the next pass tries again
                log.warning("run %s: relayed artifact %s not copied yet: %s", run.id, name, exc)
                return False
            try:
                server.upload(run.mlflow_artifact_uri, copy, item.directory)
            except TrackingRejected as exc:
                # This file, not the server: the rest of the run's record goes on.
                log.warning("run %s: relayed artifact %s refused: %s", run.id, name, exc)
        return True

    def log(self, server: TrackingServer, run: Run, batch: Batch) -> None:
        """Log what the job logged. The server may refuse one value (a param the spec already
        set to another value, a key it does not accept): then each part goes on its own, so
        one refusal loses only itself, with a warning, never the run's other values."""
        assert run.mlflow_run_id is not None
        try:
            server.log_batch(run.mlflow_run_id, batch)
            return
        except TrackingRejected as exc:
            log.warning("run %s: relayed batch refused, sending it item by item: %s", run.id, exc)
        parts = [Batch(params={k: v}) for k, v in batch.params.items()]
        parts += [Batch(tags={k: v}) for k, v in batch.tags.items()]
        by_key: dict[str, list[MetricPoint]] = {}
        for point in batch.metrics:
            by_key.setdefault(point.key, []).append(point)
        parts += [Batch(metrics=points) for points in by_key.values()]
        for part in parts:
            try:
                server.log_batch(run.mlflow_run_id, part)
            except TrackingRejected as exc:
                log.warning("run %s: relayed value refused, left out: %s", run.id, exc)
