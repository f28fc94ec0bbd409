"""Relay mode: the job logs into an MLflow file store on shared scratch, the daemon copies it.

Compute nodes that cannot reach the tracking server still see shared scratch. Before sbatch the
daemon creates a file store with one run in it and hands the job its id (MLFLOW_TRACKING_URI=
file:///..., MLFLOW_RUN_ID), so the user's `mlflow.log_metric(...)` needs no change. The daemon
reads what appears there and logs it onto the run's record on the server, keeping each metric's
timestamp and step: the server's record is the one direct logging would have made.

The file store's layout (MLflow's FileStore, stable since MLflow 1.x):

    ROOT/0/RUN_ID/meta.yaml
                 /metrics/KEY       one line per point: "<timestamp_ms> <value> <step>[ ...]"
                 /params/KEY        the value
                 /tags/KEY          the value
                 /artifacts/...     files as logged

KEY may hold '/', which becomes subdirectories. Metric files only grow, so the relay keeps a byte
offset per file and reads only what is new, and only whole lines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath

from hpcops.tracking import relay_template
from hpcops.tracking.records import Batch, MetricPoint, daemon_owned
from hpcops.transport.beneath import UnsafeFile, list_beneath, open_beneath, read_beneath

log = logging.getLogger(__name__)

EXPERIMENT_ID = "0"  # FileStore's default experiment; the relay store holds one run


@dataclass(frozen=True)
class RelayStore:
    root: Path
    run_id: str

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    @property
    def run_dir(self) -> Path:
        return self.root / EXPERIMENT_ID / self.run_id


def prepare(root: Path, *, run_name: str, user: str) -> RelayStore:
    """The file store at `root` with its one run, created if missing (idempotent: a store made
    by an attempt that crashed before it was recorded is found again, not made twice). A new
    one is stamped from the template FileStore's own first store taught (relay_template.py)."""
    from mlflow.entities import ViewType
    from mlflow.store.tracking.file_store import FileStore

    if root.exists() and not (root / EXPERIMENT_ID / "meta.yaml").is_file():
        # Left by a crash inside FileStore's own set-up, before any run existed: start over.
        # (FileStore makes its default experiment only when the root does not exist yet.)
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    if not root.exists():
        learnt = relay_template.template()
        if learnt is not None:
            now_ms = int(time.time() * 1000)
            return RelayStore(root, learnt.stamp(root, run_name=run_name, user=user, now_ms=now_ms))
    store = FileStore(str(root))
    found = store.search_runs([EXPERIMENT_ID], None, ViewType.ALL, max_results=1)
    if found:
        return RelayStore(root, found[0].info.run_id)
    run = store.create_run(
        experiment_id=EXPERIMENT_ID,
        user_id=user,
        start_time=int(time.time() * 1000),
        tags=[],
        run_name=run_name,
    )
    return RelayStore(root, run.info.run_id)


def job_env(relay: RelayStore) -> tuple[tuple[str, str], ...]:
    return (
        ("MLFLOW_TRACKING_URI", relay.uri),
        ("MLFLOW_RUN_ID", relay.run_id),
        ("MLFLOW_EXPERIMENT_ID", EXPERIMENT_ID),
        # MLflow 3 refuses a file store unless asked for one (measured on 3.17.2).
        ("MLFLOW_ALLOW_FILE_STORE", "true"),
    )


def parse_metric_lines(
    data: bytes, max_points: int | None = None
) -> tuple[list[tuple[int, float, int]], int]:
    """Points in a chunk of a FileStore metric file (at most `max_points`), and how many bytes
    of it they used: the lines after the last point taken are left for next time.

    Only whole lines count: a line still being written (no newline yet) is left for next time.
    A line that does not parse is skipped, not fatal: the user's job owns this file."""
    end = data.rfind(b"\n") + 1
    points: list[tuple[int, float, int]] = []
    used = 0
    while used < end and (max_points is None or len(points) < max_points):
        stop = data.index(b"\n", used) + 1
        point = _metric_point(data[used:stop])
        used = stop
        if point is not None:
            points.append(point)
    return points, used


def _metric_point(line: bytes) -> tuple[int, float, int] | None:
    parts = line.split()
    if len(parts) < 2:
        return None
    try:
        timestamp = int(parts[0])
        value = float(parts[1])
        step = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        return None
    # MLflow's protobuf holds int64: a larger number raised in the client, which once looked
    # like "server unreachable" for the whole lab. Out of range: not a point.
    if not (0 <= timestamp <= _INT64_MAX and -_INT64_MAX <= step <= _INT64_MAX):
        return None
    return timestamp, value, step


@dataclass(frozen=True)
class Artifact:
    """A file to upload: its path relative to the store's trusted root, its artifact directory,
    and its cursor (key, size:mtime), kept only once the server took it or refused it for good:
    a copy that failed once is tried again by the next pass."""

    path: PurePath
    directory: str | None
    cursor: str
    signature: str


@dataclass
class Delta:
    """What is new in a relay store since the cursors: one batch, files to upload, and the
    cursors to keep once the server has taken the batch; `more`: one pass did not hold it all,
    the rest is for the next."""

    batch: Batch = field(default_factory=Batch)
    artifacts: list[Artifact] = field(default_factory=list)
    cursors: dict[str, str] = field(default_factory=dict)
    more: bool = False


# The job writes the store: bound what one pass reads, and what one value may be.
_INT64_MAX = 2**63 - 1
_PASS_MAX_BYTES = 64 * 1024 * 1024
# And in points: `0 0` lines are 4 bytes, and a point held in memory about 550 (measured).
_PASS_MAX_POINTS = 100_000
# MLflow's own rule for metric, param and tag keys; a file name outside it is not a key (a
# non-UTF-8 name failed in the client and the store).
_KEY_RE = re.compile(r"[A-Za-z0-9_\-. /:]{1,250}")
_METRIC_CHUNK_BYTES = 8 * 1024 * 1024
# Artifacts are copied to the daemon's disk, then uploaded: what one pass takes (at least one
# file; hpcops/tracking/forward.py bounds one file).
_PASS_MAX_ARTIFACT_BYTES = 1024**3
_VALUE_MAX_BYTES = 1024 * 1024


def _read_text(root: Path, path: PurePath) -> str | None:
    try:
        chunk = read_beneath(root, path, 0, _VALUE_MAX_BYTES)
    except (UnsafeFile, OSError):
        return None  # a link, a FIFO, unreadable or gone: not a value of this run's
    return chunk.data.decode("utf-8", errors="replace")


def _digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode("utf-8", errors="replace")).hexdigest()


def _listed(root: Path, folder: PurePath) -> list[str]:
    """The files in one of the store's folders. One the job made unreadable (chmod 000) costs
    only what it holds, this pass: raised, it cost the run its metrics and params too."""
    try:
        return list_beneath(root, folder)
    except (UnsafeFile, OSError) as exc:
        log.warning("relay store %s: %s not read: %s", root / folder.parent, folder.name, exc)
        return []


def _keys(names: list[str]) -> list[str]:
    """The job's keys that are copied: MLflow's, and not one the daemon records itself (the
    file store's own run name and user, Slurm's figures, the code's commit, the data's version;
    nor does a job move its record out of its sweep's parent)."""
    return [name for name in names if _KEY_RE.fullmatch(name) and not daemon_owned(name)]


def collect(
    root: Path,
    run_dir: PurePath,
    cursors: dict[str, str],
    *,
    final: bool,
    held_back: Set[str] = frozenset(),
) -> Delta:
    """What in the file-store run at `root/run_dir` the cursors say was not sent yet, as much
    as one pass holds (`Delta.more`: the rest waits for the next), leaving out the artifacts
    whose cursor is `held_back` (their copy failed: tried again later). The store is the
    job's: every file is reached from `root` without following links
    (hpcops/transport/beneath.py), and a file that cannot be read so is skipped, not fatal."""
    delta = Delta()
    _collect_metrics(root, run_dir, cursors, delta)
    _collect_values(root, run_dir, cursors, delta, final=final)
    _collect_artifacts(root, run_dir, cursors, delta, held_back)
    return delta


def _collect_metrics(root: Path, run_dir: PurePath, cursors: dict[str, str], delta: Delta) -> None:
    budget = _PASS_MAX_BYTES  # what one pass reads in all
    points_left = _PASS_MAX_POINTS
    for key in _keys(_listed(root, run_dir / "metrics")):
        cursor = f"metric:{key}"
        if budget <= 0 or points_left <= 0:
            delta.more = True
            return
        try:
            offset = max(0, int(cursors.get(cursor, "0")))
            want = min(_METRIC_CHUNK_BYTES, budget)
            chunk = read_beneath(root, run_dir / "metrics" / key, offset, want)
        except (UnsafeFile, OSError, ValueError):
            continue
        budget -= len(chunk.data)
        points, used = parse_metric_lines(chunk.data, points_left)
        points_left -= len(points)
        unread = chunk.start + len(chunk.data) < chunk.size
        if not used and unread and want == _METRIC_CHUNK_BYTES:
            used = len(chunk.data)  # a "line" longer than a chunk is no point: passed over
        # Whole lines left after what was taken (a last line still being written is not).
        delta.more |= unread or used < chunk.data.rfind(b"\n") + 1
        delta.batch.metrics.extend(MetricPoint(key, v, ts, step) for ts, v, step in points)
        if used:
            delta.cursors[cursor] = str(offset + used)


def _collect_values(
    root: Path, run_dir: PurePath, cursors: dict[str, str], delta: Delta, *, final: bool
) -> None:
    """Params and tags that changed, in a budget of their own: metrics never crowd them out."""
    budget = _PASS_MAX_BYTES  # what one pass holds; an unchanged value costs none
    for kind, target in (("param", delta.batch.params), ("tag", delta.batch.tags)):
        for key in _keys(_listed(root, run_dir / f"{kind}s")):
            if budget <= 0:
                delta.more = True
                return
            value = _read_text(root, run_dir / f"{kind}s" / key)
            if value is None:
                continue
            # A param file is written in place: empty may mean "being written". Params cannot
            # change once logged, so wait for the value, except on the last pass.
            if kind == "param" and not value and not final:
                continue
            # The cursor keeps a digest, not the value: the job decides how long a value is.
            seen = _digest(value)
            if cursors.get(f"{kind}:{key}") != seen:
                target[key] = value
                delta.cursors[f"{kind}:{key}"] = seen
                budget -= len(value)


def _collect_artifacts(
    root: Path, run_dir: PurePath, cursors: dict[str, str], delta: Delta, held_back: Set[str]
) -> None:
    budget = _PASS_MAX_ARTIFACT_BYTES
    for rel in _listed(root, run_dir / "artifacts"):
        if f"artifact:{rel}" in held_back:
            continue
        path = run_dir / "artifacts" / rel
        try:
            fd = open_beneath(root, path)
        except (UnsafeFile, OSError):
            continue
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        signature = f"{st.st_size}:{st.st_mtime_ns}"
        if cursors.get(f"artifact:{rel}") != signature:
            if delta.artifacts and st.st_size > budget:
                delta.more = True
                return
            budget -= st.st_size
            parent = PurePosixPath(rel).parent.as_posix()
            directory = None if parent == "." else parent
            delta.artifacts.append(Artifact(path, directory, f"artifact:{rel}", signature))
