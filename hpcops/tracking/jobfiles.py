"""Files a job wrote (its stdout and stderr, its run directory's script), uploaded to its run's
record without trusting them: copied first from a handle opened beneath the run and relay roots
without following links, bounded to their last bytes; a file that cannot be read that way costs
only the record that file, and a short note takes its place."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from hpcops.rundir import RunDir
from hpcops.store import Run
from hpcops.tracking import records
from hpcops.tracking.server import TrackingServer
from hpcops.transport.beneath import UnsafeFile, anchor, copy_beneath

log = logging.getLogger(__name__)


class JobFiles:
    def __init__(self, roots: tuple[Path, ...], *, max_log_bytes: int) -> None:
        # Run directories and relay stores are written by jobs: their files are opened from
        # these roots without following links (hpcops/transport/beneath.py).
        self.roots = roots
        self.max_log_bytes = max_log_bytes

    def upload_logs(self, server: TrackingServer, run: Run, artifact_dir: str) -> None:
        """The job's stdout and stderr, from the run directory, into `artifact_dir`."""
        if run.run_dir:
            rundir = RunDir(Path(run.run_dir))
            for path in (rundir.stdout, rundir.stderr):
                self.upload(
                    server, run, path, max_bytes=self.max_log_bytes, artifact_dir=artifact_dir
                )

    def upload(
        self,
        server: TrackingServer,
        run: Run,
        path: Path,
        *,
        max_bytes: int,
        artifact_dir: str = records.ARTIFACT_DIR,
    ) -> None:
        """Upload a file the job could have written (its logs, its run directory's script).

        It is copied first, from a handle opened without following links and bounded to its
        last `max_bytes` (a 10 GB log's end says how the job ended), and the copy is uploaded.
        A file that cannot be read that way (a link, a FIFO, unreadable) costs only this run's
        record that file: a short note takes its place, and the outbox moves on."""
        assert run.mlflow_artifact_uri is not None
        root, relative = anchor(self.roots, path)
        with tempfile.TemporaryDirectory(prefix="hpcops-upload-") as tmp:
            copy = Path(tmp) / path.name
            try:
                copy_beneath(root, relative, copy, max_bytes=max_bytes)
            except FileNotFoundError:
                return
            except (UnsafeFile, OSError) as exc:
                reason = str(exc)
                log.warning("run %s: %s not uploaded: %s", run.id, path.name, reason)
                copy.write_text(f"[hpcops: {path.name} was not uploaded: {reason}]\n")
            server.upload(run.mlflow_artifact_uri, copy, artifact_dir)
