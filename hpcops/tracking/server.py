"""The tracking server, as the few verbs hpcops needs: MLflow's exceptions stop here.

Built on MLflow's tracking store (the AbstractStore behind MlflowClient) rather than MlflowClient
itself, because the client's conveniences cost requests: `update_run` and `set_terminated` each
read the run first, and the first `log_artifact` of a run reads it to find its artifact URI
(measured on mlflow 3.17.2 against `mlflow server`). hpcops keeps the artifact URI from creation
and asks for exactly one request per verb.

Every verb raises TrackingUnreachable (no answer, timeout, 5xx: try again later) or
TrackingRejected (the server refused this request: retrying it unchanged will not help).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcops.errors import TrackingError, TrackingRejected, TrackingUnreachable
from hpcops.tracking.records import Batch, MetricPoint

log = logging.getLogger(__name__)

# MLflow error codes that mean "this request is wrong", not "the server is unwell".
_REFUSALS = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
    "BAD_REQUEST",
}
# log_batch's limits (MLflow REST API docs): 1000 metrics, 100 params, 100 tags, 1000 in all.
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100


def configure_client(timeout_s: int) -> None:
    """The MLflow client's HTTP settings live in environment variables it reads per request.

    The default (7 retries with back-off, 120 s timeout) would keep the tracking thread on one
    dead request for minutes; hpcops retries on its own schedule. Set once, before threads
    start. The job scripts unset every MLFLOW_ variable they inherit through sbatch."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    # hpcops' relay reads and creates file stores on scratch; MLflow 3 asks for consent.
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"


@dataclass(frozen=True)
class CreatedRun:
    run_id: str
    experiment_id: str
    artifact_uri: str


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    experiment_id: str
    artifact_uri: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    # Each metric's latest value (MLflow's: the highest step, then the newest timestamp).
    metrics: dict[str, float] = field(default_factory=dict)


# MlflowClient and its tracking store import more MLflow modules when first built (the store for
# the URI's scheme, its registries, the tracing client: which ones depends on the MLflow version
# and the URI, so load_mlflow does not list them). The tracking thread and the API thread (a
# rerun reads its spec from the server) may build their first at once: one at a time.
_CLIENT_LOCK = threading.Lock()


def load_mlflow() -> None:
    """Import every MLflow module the daemon uses, now, on the calling thread.

    They are otherwise imported on first use, and first use happens on two threads at once (the
    engine preparing a job's relay store, the tracking thread's client): MLflow's packages
    import each other in cycles, and a second thread can then see one of them half initialised
    ("partially initialized module"), which cost the runs it hit their records. The daemon
    calls this before it starts its threads."""
    import mlflow.entities
    import mlflow.exceptions
    import mlflow.store.artifact.artifact_repository_registry
    import mlflow.store.tracking.file_store
    import mlflow.tracking
    import mlflow.utils.file_utils  # noqa: F401


# HTTP answers that wait rather than refuse: a timeout, a rate limit, and the daemon's own access
# (its credentials are the same for every request: refusing would drop the whole lab's files).
_WAIT_STATUSES = {401, 403, 407, 408, 429}


def _refused_by_answer(exc: BaseException) -> bool:
    """Whether the server (or a proxy before it) answered this request with a 4xx about the
    request itself: a path MLflow will not take (400), a body too large (413). Sent again it is
    refused again, and as an outage it held the outbox, every run's record behind it, for ever."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in _WAIT_STATUSES


@contextmanager
def _translated(what: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        status = exc.get_http_status_code()
        message = f"{what}: {exc.error_code}: {str(exc.message)[:500]}"
        if exc.error_code in _REFUSALS and status < 500:
            raise TrackingRejected(message) from exc
        raise TrackingUnreachable(message) from exc
    except (OSError, ConnectionError, TimeoutError) as exc:
        # requests' HTTPError is an OSError: an answer, not always an outage.
        if _refused_by_answer(exc):
            raise TrackingRejected(f"{what}: {str(exc)[:500]}") from exc
        raise TrackingUnreachable(f"{what}: {exc}") from exc
    except (ValueError, TypeError, UnicodeError) as exc:
        # The client refused a value before sending it (out of range, not text): this request
        # is wrong, not the server; retrying it would hold the outbox for everyone.
        raise TrackingRejected(f"{what}: {type(exc).__name__}: {str(exc)[:500]}") from exc
    except Exception as exc:
        # requests' own exceptions (artifact uploads) and anything else from the client: the
        # server or the path to it failed; retry later, and keep the evidence in the log.
        if type(exc).__module__.startswith(("requests", "urllib3")):
            raise TrackingUnreachable(f"{what}: {exc}") from exc
        log.exception("%s: unexpected error from the MLflow client", what)
        raise TrackingUnreachable(f"{what}: {type(exc).__name__}: {exc}") from exc


class TrackingServer:
    """One tracking URI: an `mlflow server` (http/https) or a sqlite store in the daemon's home."""

    def __init__(self, uri: str, *, artifact_root: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        # For a sqlite store only: where new experiments keep their artifacts. MLflow's own
        # default is ./mlruns, relative to whatever directory the daemon was started in.
        self.artifact_root = artifact_root
        with _CLIENT_LOCK:
            client = MlflowClient(tracking_uri=uri)
            self._store: Any = client._tracking_client.store  # one request per verb (see above)
        self._experiments: dict[str, str] = {}
        self._repos: dict[str, Any] = {}

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created if missing; cached for the daemon's life."""
        if name in self._experiments:
            return self._experiments[name]
        with _translated(f"experiment {name!r}"):
            found = self._store.get_experiment_by_name(name)
            if found is None:
                location = None
                if self.artifact_root is not None:
                    from mlflow.utils.file_utils import path_to_local_file_uri

                    digest = _short_hash(name)
                    location = path_to_local_file_uri(str(self.artifact_root / digest))
                try:
                    experiment_id = self._store.create_experiment(name, location, [])
                except Exception:
                    # Another daemon (or a person) created it a moment ago.
                    found = self._store.get_experiment_by_name(name)
                    if found is None:
                        raise
                    experiment_id = found.experiment_id
            else:
                experiment_id = found.experiment_id
        self._experiments[name] = str(experiment_id)
        return str(experiment_id)

    def find_run(self, experiment_id: str, tag: str, value: str) -> CreatedRun | None:
        """The run carrying this tag value, if one exists (idempotent creation after a crash)."""
        from mlflow.entities import ViewType

        escaped = value.replace("'", "\\'")
        with _translated(f"search by {tag}"):
            runs = self._store.search_runs(
                experiment_ids=[experiment_id],
                filter_string=f"tags.`{tag}` = '{escaped}'",
                run_view_type=ViewType.ALL,
                max_results=1,
                order_by=None,
                page_token=None,
            )
        if not runs:
            return None
        info = runs[0].info
        return CreatedRun(info.run_id, str(info.experiment_id), info.artifact_uri)

    def create_run(
        self, experiment_id: str, *, name: str, user: str, start_ms: int, tags: dict[str, str]
    ) -> CreatedRun:
        from mlflow.entities import RunTag

        with _translated("create run"):
            run = self._store.create_run(
                experiment_id=experiment_id,
                user_id=user,
                start_time=start_ms,
                tags=[RunTag(k, v) for k, v in tags.items()],
                run_name=name,
            )
        return CreatedRun(run.info.run_id, str(run.info.experiment_id), run.info.artifact_uri)

    def log_batch(self, run_id: str, batch: Batch) -> int:
        """Log a batch in as few requests as MLflow's limits allow; return the request count."""
        from mlflow.entities import Metric, Param, RunTag

        requests = 0
        for metrics, params, tags in split_batch(batch):
            with _translated("log batch"):
                self._store.log_batch(
                    run_id,
                    metrics=[Metric(m.key, m.value, m.timestamp_ms, m.step) for m in metrics],
                    params=[Param(k, v) for k, v in params.items()],
                    tags=[RunTag(k, v) for k, v in tags.items()],
                )
            requests += 1
        return requests

    def set_status(self, run_id: str, status: str, end_ms: int | None = None) -> None:
        from mlflow.entities import RunStatus

        with _translated(f"set status {status}"):
            self._store.update_run_info(run_id, RunStatus.from_string(status), end_ms, None)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        from mlflow.entities import RunTag

        with _translated(f"set tag {key}"):
            self._store.set_tag(run_id, RunTag(key, value))

    def _repo(self, artifact_uri: str) -> Any:
        repo = self._repos.get(artifact_uri)
        if repo is None:
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            with _translated("artifact repository"):
                repo = get_artifact_repository(artifact_uri, tracking_uri=self.uri)
            if len(self._repos) > 256:
                self._repos.clear()
            self._repos[artifact_uri] = repo
        return repo

    def upload(self, artifact_uri: str, local_path: Path, artifact_dir: str | None) -> None:
        """One file into the run's artifacts (one PUT through `mlflow server`)."""
        with _translated(f"upload {local_path.name}"):
            self._repo(artifact_uri).log_artifact(str(local_path), artifact_dir)

    def upload_text(self, artifact_uri: str, name: str, text: str, artifact_dir: str) -> None:
        with tempfile.TemporaryDirectory(prefix="hpcops-artifact-") as tmp:
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            self.upload(artifact_uri, path, artifact_dir)

    def answers(self) -> bool:
        """Whether the server answers a request that changes nothing (one experiment listed):
        tells an outage from one request it keeps failing."""
        try:
            with _translated("list one experiment"):
                self._store.search_experiments(max_results=1)
        except TrackingError:
            return False
        return True

    def get_run(self, run_id: str) -> RunRecord:
        with _translated(f"read run {run_id}"):
            run = self._store.get_run(run_id)
        return RunRecord(
            run_id=run.info.run_id,
            experiment_id=str(run.info.experiment_id),
            artifact_uri=run.info.artifact_uri,
            status=run.info.status,
            params=dict(run.data.params),
            tags=dict(run.data.tags),
            metrics={str(k): float(v) for k, v in run.data.metrics.items()},
        )

    def read_text_artifact(self, artifact_uri: str, path: str) -> str:
        with (
            tempfile.TemporaryDirectory(prefix="hpcops-artifact-") as tmp,
            _translated(f"download {path}"),
        ):
            local = self._repo(artifact_uri).download_artifacts(path, dst_path=tmp)
            return Path(local).read_text(encoding="utf-8")


def split_batch(
    batch: Batch,
) -> list[tuple[Sequence[MetricPoint], dict[str, str], dict[str, str]]]:
    """A batch cut to log_batch's limits; pure. An empty batch is no request at all."""
    params = list(batch.params.items())
    tags = list(batch.tags.items())
    metrics = batch.metrics
    parts: list[tuple[Sequence[MetricPoint], dict[str, str], dict[str, str]]] = []
    # Sliced by index: cutting off the rest each time copied it, quadratic in a pass's points.
    at_p = at_t = at_m = 0
    while at_m < len(metrics) or at_p < len(params) or at_t < len(tags):
        p = params[at_p : at_p + MAX_BATCH_PARAMS]
        t = tags[at_t : at_t + MAX_BATCH_TAGS]
        room = MAX_BATCH_METRICS - len(p) - len(t)
        m = metrics[at_m : at_m + room]
        at_p, at_t, at_m = at_p + len(p), at_t + len(t), at_m + len(m)
        parts.append((m, dict(p), dict(t)))
    return parts


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]
