"""One MLflow record across a run's attempts: the "attempt" and "reopen" operations, a close
after several attempts, the relay store shared by the attempts, and a sweep's parent while a
point is retried; against a real MLflow store (sqlite, no server, no Slurm)."""

from __future__ import annotations

import errno
import time
from pathlib import Path, PurePath
from typing import Any

import pytest
import tracking_harness
from tracking_harness import Clock, sqlite_mlflow

from hpcops.retries import RetryRules, next_attempt_fields
from hpcops.states import RunState
from hpcops.store import Attempt, AttemptEnd, Run
from hpcops.store.tracking import SWEEP_OP, tracking_ops_for
from hpcops.tracking import records, relay
from hpcops.transport.beneath import UnsafeFile

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

SPEC = "name: train\nexperiment: {experiment}\ncommand: python train.py\nparams: {{lr: 0.1}}\n"


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return sqlite_mlflow(tmp_path_factory.mktemp("mlflow"))


class Lab(tracking_harness.Lab):
    """The tracking lab, with a run's attempts played through the store as the engine plays
    them (Store.transition with `ended`)."""

    def __init__(self, tmp: Path, uri: str) -> None:
        super().__init__(tmp, uri, Clock())
        self.runs = tmp / "runs"

    def add(self, **fields: Any) -> int:
        run = Run(
            name="train",
            experiment=self.experiment,
            owner="ana",
            owner_uid=1000,
            state=RunState.QUEUED,
            spec_yaml=SPEC.format(experiment=self.experiment),
            spec_hash="h",
            created_at=time.time(),
            updated_at=time.time(),
            **fields,
        )
        added = self.store.add_run(run, actor="ana")
        assert added.id is not None
        return self.with_run_dir(added.id)

    def with_run_dir(self, run_id: int) -> int:
        run_dir = self.runs / f"run-{run_id:06d}"
        run_dir.mkdir(parents=True)
        self.store.transition(run_id, None, actor="ana", run_dir=str(run_dir))
        return run_id

    def start(self, run_id: int, job_id: str, *, stdout: str = "") -> dict[str, str]:
        """The run's next attempt submitted and running; its job's MLflow environment."""
        run = self.store.get(run_id)
        job = self.tracker.job_tracking(run, Path(run.run_dir))
        self.store.transition(run_id, RunState.SUBMITTING, actor="daemon", **job.fields)
        self.store.transition(
            run_id, RunState.RUNNING, actor="daemon", slurm_job_id=job_id, started_at=time.time()
        )
        (Path(run.run_dir) / "stdout.log").write_text(stdout)
        return dict(job.env)

    def end(self, run_id: int, state: RunState, *, retried: bool, **figures: Any) -> None:
        """The attempt ends in `state`: the run ends with it, or its next attempt is queued."""
        now = time.time()
        ended: AttemptEnd = {"state": state, "ended_at": now, "elapsed_s": 60, **figures}
        if retried:
            self.store.transition(
                run_id,
                RunState.QUEUED,
                actor="daemon",
                ended=ended,
                slurm_job_id=None,
                started_at=None,
                queued_at=now,
            )
        else:
            fields = {k: v for k, v in figures.items() if k in ("exit_code", "reason")}
            self.store.transition(
                run_id, state, actor="daemon", ended=ended, ended_at=now, elapsed_s=60, **fields
            )

    def retry(self, run_id: int) -> None:
        """`hpcops retry` (Engine.retry): the ended run queued again, its last job cleared."""
        fields = next_attempt_fields(time.time(), keep_place=True)
        self.store.transition(run_id, RunState.QUEUED, actor="ana", **fields)

    def ended_once(self, state: RunState, *, stdout: str, exit_code: int) -> int:
        """A run whose one attempt ended in `state`, its record closed."""
        run_id = self.add()
        self.drain()
        self.start(run_id, "41", stdout=stdout)
        self.end(run_id, state, retried=False, exit_code=exit_code)
        self.drain()
        return run_id

    def record(self, run_id: int) -> Any:
        mlflow_run_id = self.store.get(run_id).mlflow_run_id
        assert mlflow_run_id is not None
        return self.client().get_run(mlflow_run_id)

    def artifacts(self, run_id: int, path: str) -> list[str]:
        record = self.record(run_id)
        return sorted(f.path for f in self.client().list_artifacts(record.info.run_id, path))

    def text(self, run_id: int, path: str) -> str:
        record = self.record(run_id)
        local = self.client().download_artifacts(record.info.run_id, path, str(self.home))
        return Path(local).read_text()


@pytest.fixture
def lab(tmp_path: Path, mlflow_uri: str) -> Lab:
    return Lab(tmp_path, mlflow_uri)


# --- the outbox (pure) -------------------------------------------------------------------------


def test_an_attempt_and_a_reopen_are_owed_and_a_reopened_point_owes_its_parent() -> None:
    assert tracking_ops_for("RUNNING", "QUEUED") == ["attempt"]
    assert tracking_ops_for("FAILED", "QUEUED") == ["reopen"]
    assert tracking_ops_for("FAILED", "QUEUED", point=True) == ["reopen", SWEEP_OP]
    assert tracking_ops_for("RUNNING", "QUEUED", point=True) == ["attempt"]


# --- what an attempt's record holds (pure) ------------------------------------------------------


def test_an_attempts_figures_are_named_by_its_number_and_the_closing_names_stay() -> None:
    attempt = Attempt(
        run_id=3,
        number=2,
        slurm_job_id="41",
        state=RunState.TIMEOUT,
        slurm_state="TIMEOUT",
        started_at=1_700_000_000.0,
        ended_at=1_700_000_060.0,
        elapsed_s=60,
        restarts=1,
        exit_code=0,
        signal=15,
        reason="DUE TO TIME LIMIT",
    )
    batch = records.attempt_batch(attempt)
    assert batch.tags == {
        "slurm.attempt.2.state": "TIMEOUT",
        "slurm.attempt.2.slurm_state": "TIMEOUT",
        "slurm.attempt.2.exit_code": "0:15",
        "slurm.attempt.2.reason": "DUE TO TIME LIMIT",
        "slurm.attempt.2.job_id": "41",
        "slurm.attempt.2.started": "2023-11-14T22:13:20Z",
        "slurm.attempt.2.ended": "2023-11-14T22:14:20Z",
    }
    assert {m.key: m.value for m in batch.metrics} == {
        "slurm.attempt.2.elapsed_s": 60.0,
        "slurm.attempt.2.exit_code": 0.0,
        "slurm.attempt.2.restarts": 1.0,
    }
    # Logged again after a crash: the same points, stamped with the attempt's end.
    assert {m.timestamp_ms for m in batch.metrics} == {1_700_000_060_000}
    assert records.attempt_batch(attempt) == batch


def test_a_submission_names_the_attempt_as_the_job_does() -> None:
    run = Run(
        name="train",
        experiment="e",
        owner="ana",
        owner_uid=1000,
        state=RunState.PENDING,
        spec_yaml="name: train\n",
        spec_hash="h",
        created_at=1.0,
        updated_at=1.0,
        slurm_job_id="57",
        attempts_ended=2,
        attempt=4,  # one attempt was submitted twice
    )
    tags = records.submission_tags(run, cluster=None, mode="direct")
    assert (tags["hpcops.attempt"], tags["hpcops.claim"]) == ("3", "4")


# --- one record across attempts ---------------------------------------------------------------


def test_attempts_keep_the_record_open_and_apart_then_the_close_ends_it(lab: Lab) -> None:
    run_id = lab.add()
    lab.drain()
    lab.start(run_id, "41", stdout="attempt one\n")
    lab.drain()
    # The job's own `with mlflow.start_run():` ended the run it logged into as it exited.
    lab.client().set_terminated(lab.record(run_id).info.run_id, "KILLED")
    lab.end(run_id, RunState.TIMEOUT, retried=True, reason="DUE TO TIME LIMIT")
    assert [op.attempt for op in lab.store.tracking_ops(run_id) if op.kind == "attempt"] == [1]
    lab.drain()
    record = lab.record(run_id)
    assert record.info.status == "RUNNING"
    assert record.data.tags["slurm.attempt.1.job_id"] == "41"
    assert record.data.tags["slurm.attempt.1.state"] == "TIMEOUT"
    assert record.data.metrics["slurm.attempt.1.elapsed_s"] == 60
    assert lab.text(run_id, "hpcops/attempts/1/stdout.log") == "attempt one\n"

    lab.start(run_id, "57", stdout="attempt two\n")
    lab.drain()
    lab.end(run_id, RunState.COMPLETED, retried=False, exit_code=0)
    lab.drain()
    record = lab.record(run_id)
    assert record.info.status == "FINISHED" and record.info.end_time is not None
    tags, metrics = record.data.tags, record.data.metrics
    # The run's last job under the names a run of one attempt has, and each attempt apart.
    assert (tags["hpcops.slurm_job_id"], tags["hpcops.state"]) == ("57", "COMPLETED")
    assert (tags["slurm.attempt.1.job_id"], tags["slurm.attempt.2.job_id"]) == ("41", "57")
    assert tags["slurm.attempt.2.state"] == "COMPLETED"
    assert metrics["slurm.exit_code"] == 0 and metrics["slurm.attempt.2.exit_code"] == 0
    assert lab.text(run_id, "hpcops/stdout.log") == "attempt two\n"
    assert lab.text(run_id, "hpcops/attempts/2/stdout.log") == "attempt two\n"
    assert lab.text(run_id, "hpcops/attempts/1/stdout.log") == "attempt one\n"
    assert lab.store.tracking_backlog() == 0


def test_a_run_of_one_attempt_closes_as_it_always_did(lab: Lab) -> None:
    run_id = lab.ended_once(RunState.COMPLETED, stdout="only\n", exit_code=0)
    record = lab.record(run_id)
    assert record.info.status == "FINISHED"
    assert not [k for k in record.data.tags if k.startswith("slurm.attempt.")]
    assert "hpcops/attempts" not in lab.artifacts(run_id, "hpcops")
    assert lab.text(run_id, "hpcops/stdout.log") == "only\n"


def test_a_retry_by_hand_reopens_the_record_with_the_attempt_that_ended_it(lab: Lab) -> None:
    run_id = lab.ended_once(RunState.FAILED, stdout="not yet\n", exit_code=3)
    assert lab.record(run_id).info.status == "FAILED"

    # `hpcops retry` (Engine.retry): the ended run queued again, its record reopened.
    lab.retry(run_id)
    [reopen] = [op for op in lab.store.tracking_ops(run_id) if op.kind == "reopen"]
    assert reopen.attempt == 2  # the attempt it opens the record for
    lab.drain()
    record = lab.record(run_id)
    assert record.info.status == "RUNNING"
    assert record.data.tags["slurm.attempt.1.exit_code"] == "3:0"
    assert lab.text(run_id, "hpcops/attempts/1/stdout.log") == "not yet\n"

    lab.start(run_id, "57", stdout="fixed\n")
    lab.end(run_id, RunState.COMPLETED, retried=False, exit_code=0)
    lab.drain()
    record = lab.record(run_id)
    assert record.info.status == "FINISHED"
    assert record.data.tags["slurm.attempt.2.job_id"] == "57"
    assert lab.text(run_id, "hpcops/stdout.log") == "fixed\n"
    experiment = lab.client().get_experiment_by_name(lab.experiment)
    assert len(lab.client().search_runs([experiment.experiment_id])) == 1, "one record"


def test_a_close_overtaken_by_a_retry_leaves_the_record_open(lab: Lab) -> None:
    run_id = lab.add()
    lab.drain()
    lab.start(run_id, "41")
    lab.end(run_id, RunState.FAILED, retried=False, exit_code=3)
    lab.retry(run_id)
    lab.drain()  # the close, then the reopen, done late and in order
    record = lab.record(run_id)
    assert record.info.status == "RUNNING"
    assert record.data.tags["slurm.attempt.1.state"] == "FAILED"
    assert lab.store.tracking_backlog() == 0


def test_logs_of_an_attempt_already_overwritten_are_said_to_be_missing(lab: Lab) -> None:
    run_id = lab.add()
    lab.drain()
    lab.start(run_id, "41", stdout="one\n")
    lab.end(run_id, RunState.PREEMPTED, retried=True)
    # The server answers only once the next attempt's job has started (and truncated the log).
    lab.start(run_id, "57", stdout="two\n")
    lab.drain()
    assert lab.artifacts(run_id, "hpcops/attempts/1") == ["hpcops/attempts/1/logs-missing.txt"]
    assert "attempt 1's logs were not kept" in lab.text(
        run_id, "hpcops/attempts/1/logs-missing.txt"
    )
    assert lab.record(run_id).data.tags["slurm.attempt.1.state"] == "PREEMPTED"


@pytest.mark.parametrize("waiting", [RunState.PENDING, RunState.STAGING])
def test_logs_of_an_attempt_are_kept_while_the_next_job_waits_in_slurm(
    lab: Lab, waiting: RunState
) -> None:
    run_id = lab.add()
    lab.drain()
    lab.start(run_id, "41", stdout="one\n")
    lab.end(run_id, RunState.PREEMPTED, retried=True)
    # retry.backoff_s 0: the engine submits the next attempt in the tick the attempt ended.
    # Its job pends (or its staging job runs, into staging.log): stdout.log is still one's.
    lab.store.transition(run_id, RunState.SUBMITTING, actor="daemon")
    lab.store.transition(run_id, waiting, actor="daemon", slurm_job_id="57")
    lab.drain()
    assert lab.artifacts(run_id, "hpcops/attempts/1") == ["hpcops/attempts/1/stdout.log"]
    assert lab.text(run_id, "hpcops/attempts/1/stdout.log") == "one\n"


def test_an_attempt_that_ends_wakes_the_tracker_at_once(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine may submit the next attempt in the same tick: the tracker (which otherwise
    waits up to 0.5 s) takes the ended attempt's logs before that job can start."""
    from hpcops.engine import follow
    from hpcops.engine.state import LoopState, Parts
    from hpcops.lifecycle import Outcome

    rules = RetryRules(2, frozenset({RunState.TIMEOUT}))
    monkeypatch.setattr(RetryRules, "of", classmethod(lambda cls, spec: rules))
    run_id = lab.add()
    lab.drain()
    lab.start(run_id, "41")

    class Files:
        def remove_files(self, paths: Any) -> None:
            return None

    parts: Any = Parts(
        store=lab.store,
        slurm=None,  # not asked when an attempt ends
        files=Files(),
        config=lab.config,
        home=lab.home,
        code_mirror=None,  # not asked when an attempt ends
        data_cache=None,  # not asked when an attempt ends
        tracker=lab.tracker,
        clock=time.time,
        fault=None,
        placement=None,  # not asked when an attempt ends
    )
    lab.tracker.wake.clear()
    timeout = Outcome(
        RunState.TIMEOUT, expect=(RunState.RUNNING,), fields={"ended_at": time.time()}
    )
    follow.end_attempt(parts, LoopState(), lab.store.get(run_id), timeout)
    assert lab.store.get(run_id).state == RunState.QUEUED
    assert lab.tracker.wake.is_set()


def test_relay_mode_every_attempt_logs_into_one_store_and_one_series(lab: Lab) -> None:
    from mlflow.tracking import MlflowClient

    run_id = lab.add()
    lab.drain()
    envs = []
    for attempt, job_id in enumerate(("41", "57")):
        env = lab.start(run_id, job_id)
        envs.append(env)
        job = MlflowClient(env["MLFLOW_TRACKING_URI"])
        for step in range(attempt * 3, attempt * 3 + 3):
            job.log_metric(env["MLFLOW_RUN_ID"], "count", float(step), step=step)
        if attempt == 0:
            lab.end(run_id, RunState.TIMEOUT, retried=True)
            lab.drain()
    assert envs[0] == envs[1], "the second attempt logs into the first one's relay run"
    lab.end(run_id, RunState.COMPLETED, retried=False, exit_code=0)
    lab.drain()
    record = lab.record(run_id)
    history = lab.client().get_metric_history(record.info.run_id, "count")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4, 5]
    assert record.info.status == "FINISHED"


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied"),  # the job chmod 000'd its store
        OSError(errno.ESTALE, "Stale file handle"),  # NFS
        UnsafeFile("metrics is a symbolic link"),
    ],
    ids=["EACCES", "ESTALE", "unsafe"],
)
def test_an_unreadable_relay_store_costs_no_other_run_and_not_its_own_record(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    bad, good = lab.add(), lab.add()
    lab.drain()
    lab.start(bad, "41", stdout="one\n")
    lab.start(good, "42")
    bad_store = lab.store.get(bad).mlflow_relay_dir
    assert bad_store is not None
    listed = relay.list_beneath

    def listing(root: Path, relative_dir: PurePath, **kwargs: Any) -> list[str]:
        if str(root / relative_dir).startswith(bad_store):
            raise error
        return listed(root, relative_dir, **kwargs)

    monkeypatch.setattr(relay, "list_beneath", listing)
    lab.end(bad, RunState.TIMEOUT, retried=True)  # its "attempt" is the oldest operation
    lab.end(good, RunState.COMPLETED, retried=False, exit_code=0)
    lab.drain()
    assert lab.record(good).info.status == "FINISHED"
    record = lab.record(bad)
    assert (record.info.status, record.data.tags["slurm.attempt.1.state"]) == ("RUNNING", "TIMEOUT")
    assert lab.text(bad, "hpcops/attempts/1/stdout.log") == "one\n"
    assert lab.store.tracking_backlog() == 0


def _two_runs_one_relaying(lab: Lab, files: dict[str, str]) -> tuple[int, int]:
    """Two running runs; the first's job relays `files` (name: text) as artifacts."""
    bad, good = lab.add(), lab.add()
    lab.drain()
    env = lab.start(bad, "41")
    lab.start(good, "42")
    artifacts = Path(env["MLFLOW_TRACKING_URI"][len("file://") :]) / "0" / env["MLFLOW_RUN_ID"]
    (artifacts / "artifacts").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (artifacts / "artifacts" / name).write_text(text)
    return bad, good


def _upload_answering(monkeypatch: pytest.MonkeyPatch, suffix: str, status: int) -> list[bool]:
    """Uploads of files named ...`suffix` answered with HTTP `status` while the returned
    switch is on."""
    import requests
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    upload = LocalArtifactRepository.log_artifact
    switch = [True]

    def answering(repo: Any, local_file: str, artifact_path: str | None = None) -> None:
        if switch[0] and local_file.endswith(suffix):
            answer = requests.Response()
            answer.status_code = status
            raise requests.HTTPError(f"{status} Error (for the test)", response=answer)
        upload(repo, local_file, artifact_path)

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", answering)
    return switch


def test_an_artifact_the_server_refuses_costs_only_itself(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow answers 400 to an artifact path it will not take (`a%23b`), a proxy 413 to a
    body too large: that file is left out with a warning, and neither its run's record nor any
    other run's waits behind it (it held the outbox's oldest operation for ever)."""
    bad, good = _two_runs_one_relaying(lab, {"a%23b": "refused", "ok.txt": "kept"})
    _upload_answering(monkeypatch, "%23b", 400)
    lab.end(bad, RunState.COMPLETED, retried=False, exit_code=0)  # its "close" comes first
    lab.end(good, RunState.COMPLETED, retried=False, exit_code=0)
    lab.drain()
    assert lab.record(good).info.status == "FINISHED"
    assert lab.record(bad).info.status == "FINISHED"
    assert lab.artifacts(bad, "") == ["hpcops", "ok.txt"]
    assert lab.store.tracking_backlog() == 0


def test_a_request_failing_while_the_server_answers_holds_up_only_its_run(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The artifact store gives 503 for one run's file, and the tracking API answers: that
    run's record waits with a back-off, the others are made, and the server is not taken for
    down (which would hold every run's record). Once the file goes through, the record is
    completed."""
    bad, good = _two_runs_one_relaying(lab, {"model.pt": "weights"})
    failing = _upload_answering(monkeypatch, "model.pt", 503)
    lab.end(bad, RunState.COMPLETED, retried=False, exit_code=0)  # its "close" comes first
    lab.end(good, RunState.COMPLETED, retried=False, exit_code=0)
    lab.drain()
    assert lab.record(good).info.status == "FINISHED"
    assert lab.record(bad).info.status != "FINISHED"
    assert lab.tracker.health.reachable
    [waiting] = [op for op in lab.store.tracking_ops(bad) if op.done_at is None]
    assert waiting.kind == "close" and waiting.not_before > lab.clock()
    failing[0] = False
    lab.clock.offset += 3600
    lab.drain()
    assert lab.record(bad).info.status == "FINISHED"
    assert lab.artifacts(bad, "") == ["hpcops", "model.pt"]
    assert lab.store.tracking_backlog() == 0


def test_a_later_attempt_takes_its_relay_store_as_the_earlier_job_left_it(lab: Lab) -> None:
    run_id = lab.add()
    lab.drain()
    first = lab.start(run_id, "41")
    store = Path(lab.store.get(run_id).mlflow_relay_dir or "")
    # The job logged a point the server has not seen yet, and removed its store's meta.yaml.
    metric = store / "0" / first["MLFLOW_RUN_ID"] / "metrics" / "count"
    metric.parent.mkdir(parents=True, exist_ok=True)
    metric.write_text("1700000000000 1.0 1\n")
    (store / "0" / "meta.yaml").unlink()
    lab.end(run_id, RunState.NODE_FAIL, retried=True)
    second = lab.start(run_id, "57")
    assert second == first, "the same relay run: the stored cursors stay true"
    assert metric.read_text() == "1700000000000 1.0 1\n", "nothing relayed is deleted"


def test_an_attempt_released_in_relay_mode_keeps_its_successor_relaying(lab: Lab) -> None:
    run_id = lab.add()
    lab.drain()
    relay_dir = str(lab.runs / "elsewhere")
    lab.store.transition(
        run_id, None, actor="daemon", mlflow_relay_dir=relay_dir, mlflow_relay_run_id="r"
    )
    lab.tracker.mode = "direct"
    run = lab.store.get(run_id)
    job = lab.tracker.job_tracking(run, Path(run.run_dir))
    assert job.mode == "relay"


# --- a sweep's point retried --------------------------------------------------------------------


def test_a_retried_point_reopens_its_parent_until_it_ends_again(lab: Lab) -> None:
    stored, [point] = lab.add_sweep(n=1, metric=None)
    assert stored.id is not None and point.id is not None
    run = lab.store.get(lab.with_run_dir(point.id))
    assert run.id is not None
    lab.drain()
    lab.start(run.id, "41")
    lab.end(run.id, RunState.FAILED, retried=False, exit_code=1)
    lab.drain()
    parent = lab.store.get_sweep(stored.id).mlflow_run_id
    assert parent is not None
    assert lab.client().get_run(parent).info.status == "FAILED"

    lab.retry(run.id)
    lab.drain()
    assert lab.client().get_run(parent).info.status == "RUNNING"
    assert lab.store.get_sweep(stored.id).closed_at is None
    # Between attempts the point is not ended: the parent is not ended either.
    lab.start(run.id, "57")
    lab.end(run.id, RunState.TIMEOUT, retried=True)
    lab.drain()
    assert lab.client().get_run(parent).info.status == "RUNNING"

    lab.start(run.id, "58")
    lab.end(run.id, RunState.COMPLETED, retried=False, exit_code=0)
    lab.drain()
    assert lab.client().get_run(parent).info.status == "FINISHED"
    assert lab.record(run.id).data.tags["mlflow.parentRunId"] == parent


def test_direct_mode_every_attempt_logs_into_the_runs_record(lab: Lab) -> None:
    lab.tracker.mode = "direct"  # as with an http:// server
    run_id = lab.add()
    lab.drain()
    first = lab.start(run_id, "41")
    lab.end(run_id, RunState.NODE_FAIL, retried=True)
    second = lab.start(run_id, "57")
    assert first["MLFLOW_RUN_ID"] == second["MLFLOW_RUN_ID"] == lab.record(run_id).info.run_id
