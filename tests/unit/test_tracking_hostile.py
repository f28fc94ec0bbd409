"""A job writes its logs and its relay store: what it plants there costs only its own record.

Real files on disk and the real relay reader; the tracking server is a recorder that refuses
what a real server refuses (a param logged twice with another value)."""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePath
from typing import Any

import pytest

from hpcops.config import parse_config
from hpcops.errors import TrackingRejected
from hpcops.store import Run, Store
from hpcops.tracking import forward, relay
from hpcops.tracking.records import Batch, MetricPoint
from hpcops.tracking.worker import Tracker

SECRET = "MLFLOW_TRACKING_PASSWORD=hunter2"


class RecordingServer:
    """Keeps what was uploaded (the bytes, read at upload time) and logged."""

    def __init__(self, refused_params: dict[str, str] | None = None) -> None:
        self.uploads: dict[str, bytes] = {}
        self.batches: list[Batch] = []
        self.refused_params = refused_params or {}

    def upload(self, artifact_uri: str, local_path: Path, artifact_dir: str | None) -> None:
        self.uploads[f"{artifact_dir}/{local_path.name}"] = local_path.read_bytes()

    def log_batch(self, run_id: str, batch: Batch) -> None:
        for key, value in batch.params.items():
            if self.refused_params.get(key, value) != value:
                raise TrackingRejected(f"param {key} already logged with another value")
        self.batches.append(batch)

    def set_status(self, *args: Any) -> None:
        return None


@pytest.fixture
def lab(tmp_path: Path) -> tuple[Tracker, Path]:
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "secret").write_text(SECRET)
    config = parse_config(
        f"lab: t\nrun_root: {tmp_path / 'runs'}\ntracking: {{mode: relay}}\n", "config.yaml"
    )
    store = Store(home / "hpcops.db")
    return Tracker(store, config, home), tmp_path


def _run(run_dir: Path) -> Run:
    return Run(
        id=7, name="n", experiment="e", owner="ana", owner_uid=1000, priority=0,
        state="COMPLETED", spec_yaml="", spec_hash="x", created_at=1.0, updated_at=1.0,
        run_dir=str(run_dir), mlflow_run_id="m", mlflow_artifact_uri="file:///a",
    )  # fmt: skip


def test_a_log_linked_to_the_daemons_environment_uploads_a_note(lab: tuple[Tracker, Path]) -> None:
    tracker, tmp = lab
    run_dir = tmp / "runs" / "run-000007"
    run_dir.mkdir(parents=True)
    (run_dir / "stdout.log").symlink_to(tmp / "secret")
    os.mkfifo(run_dir / "stderr.log")  # would hang an open() without O_NONBLOCK
    server = RecordingServer()
    run = _run(run_dir)
    for name in ("stdout.log", "stderr.log"):
        tracker.files.upload(server, run, run_dir / name, max_bytes=1024)  # type: ignore[arg-type]
    assert set(server.uploads) == {"hpcops/stdout.log", "hpcops/stderr.log"}
    for data in server.uploads.values():
        assert b"hunter2" not in data
        assert b"was not uploaded" in data


def test_a_big_log_uploads_its_tail(lab: tuple[Tracker, Path]) -> None:
    tracker, tmp = lab
    run_dir = tmp / "runs" / "run-000007"
    run_dir.mkdir(parents=True)
    (run_dir / "stdout.log").write_bytes(b"x" * 5000 + b"the end\n")
    server = RecordingServer()
    tracker.files.upload(server, _run(run_dir), run_dir / "stdout.log", max_bytes=100)  # type: ignore[arg-type]
    data = server.uploads["hpcops/stdout.log"]
    assert data.startswith(b"[hpcops: the first 4908 bytes of 5008 are left out]\n")
    assert data.endswith(b"the end\n")


def _store(tmp: Path) -> tuple[Path, PurePath]:
    run_dir = PurePath("run-000007/0/abc")
    for sub in ("metrics", "params", "tags", "artifacts"):
        (tmp / "relay" / run_dir / sub).mkdir(parents=True)
    return tmp / "relay", run_dir


def _relaying(tracker: Tracker, tmp: Path, run_id: int = 7) -> tuple[Run, Path]:
    """A stored run whose job relays into `_store`'s run; that run's directory."""
    root, run_dir = _store(tmp)
    queued = _run(tmp / "runs" / "run-000007")
    queued.state = "QUEUED"
    queued.id = run_id
    run = tracker.store.add_run(queued, actor="ana")
    assert run.id is not None
    tracker.store.set_tracking_fields(
        run.id,
        mlflow_run_id="m",
        mlflow_artifact_uri="file:///a",
        mlflow_relay_dir=str(root / run_dir.parent.parent),
        mlflow_relay_run_id=run_dir.name,
    )
    return tracker.store.get(run.id), root / run_dir


def test_links_in_a_relay_store_are_not_followed(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET)
    outside = tmp_path / "outside"
    (outside / "metrics").mkdir(parents=True)
    (outside / "metrics" / "loss").write_text("1000 0.5 0\n")
    root, run_dir = _store(tmp_path)
    (root / run_dir / "params" / "lr").write_text("0.1")
    (root / run_dir / "params" / "leak").symlink_to(tmp_path / "secret")
    (root / run_dir / "artifacts" / "env.txt").symlink_to(tmp_path / "secret")
    os.mkfifo(root / run_dir / "tags" / "fifo")
    (root / run_dir / "metrics").rmdir()
    (root / run_dir / "metrics").symlink_to(outside / "metrics")  # a linked directory
    delta = relay.collect(root, run_dir, {}, final=True)
    assert delta.batch.params == {"lr": "0.1"}
    assert delta.batch.metrics == []
    assert delta.batch.tags == {}
    assert delta.artifacts == []


def test_a_refused_param_loses_only_itself(lab: tuple[Tracker, Path]) -> None:
    tracker, _ = lab
    server = RecordingServer(refused_params={"lr": "0.01"})
    batch = Batch(
        params={"lr": "1e-2", "epochs": "3"},
        tags={"note": "x"},
        metrics=[MetricPoint("loss", 0.5, 1000, 1), MetricPoint("acc", 0.9, 1000, 1)],
    )
    tracker.forwarder.log(server, _run(Path("/nonexistent")), batch)  # type: ignore[arg-type]
    logged = Batch()
    for b in server.batches:
        logged.params.update(b.params)
        logged.tags.update(b.tags)
        logged.metrics.extend(b.metrics)
    assert logged.params == {"epochs": "3"}
    assert logged.tags == {"note": "x"}
    assert sorted(m.key for m in logged.metrics) == ["acc", "loss"]


def test_metric_lines_out_of_mlflows_range_are_not_points() -> None:
    data = b"100000000000000000000 1 0\n1000 0.5 99999999999999999999\n-5 1 0\n1001 0.25 3\n"
    points, used = relay.parse_metric_lines(data)
    assert points == [(1001, 0.25, 3)]
    assert used == len(data)


def test_a_key_mlflow_would_refuse_is_not_relayed(tmp_path: Path) -> None:
    root, run_dir = _store(tmp_path)
    (root / run_dir / "metrics" / "loss").write_text("1000 0.5 0\n")
    (root / run_dir / "metrics" / "bad\nkey").write_text("1000 0.5 0\n")
    bad_name = os.fsdecode(b"\xff\xfe")
    (root / run_dir / "params" / bad_name).write_text("x")
    delta = relay.collect(root, run_dir, {}, final=True)
    assert [m.key for m in delta.batch.metrics] == ["loss"]
    assert delta.batch.params == {}


def test_a_value_the_client_refuses_is_a_refusal_not_an_outage() -> None:
    from hpcops.errors import TrackingRejected as Rejected
    from hpcops.tracking.server import _translated

    with pytest.raises(Rejected), _translated("log batch"):
        raise ValueError("Value out of range: 100000000000000000000")


@pytest.mark.parametrize(
    ("status", "refused"),
    [(400, True), (404, True), (413, True), (408, False), (429, False), (401, False),
     (403, False), (500, False), (503, False)],
)  # fmt: skip
def test_an_http_answer_about_the_request_is_a_refusal_and_only_an_outage_waits(
    status: int, refused: bool
) -> None:
    import requests

    from hpcops.errors import TrackingRejected as Rejected
    from hpcops.errors import TrackingUnreachable
    from hpcops.tracking.server import _translated

    answer = requests.Response()
    answer.status_code = status
    expected = Rejected if refused else TrackingUnreachable
    with pytest.raises(expected), _translated("upload a%23b"):
        raise requests.HTTPError(f"{status} for the test", response=answer)
    with pytest.raises(TrackingUnreachable), _translated("upload a"):
        raise requests.ConnectionError("connection refused")


def test_an_artifact_that_could_not_be_copied_is_uploaded_by_the_next_pass(
    lab: tuple[Tracker, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker, tmp = lab
    run, files = _relaying(tracker, tmp)
    (files / "artifacts" / "model.pt").write_bytes(b"weights")
    copy, failed = forward.copy_beneath, []

    def copy_once_failing(*args: Any, **kwargs: Any) -> int:
        if not failed:
            failed.append(True)
            raise OSError(errno.EIO, "Input/output error")  # NFS, for a moment
        return copy(*args, **kwargs)

    monkeypatch.setattr(forward, "copy_beneath", copy_once_failing)
    now = [1000.0]
    tracker.forwarder.clock = lambda: now[0]
    server = RecordingServer()
    tracker.forwarder.forward(server, run, final=False)  # type: ignore[arg-type]
    assert failed and server.uploads == {}
    tracker.forwarder.forward(server, run, final=False)  # type: ignore[arg-type]
    assert server.uploads == {}, "held back a while: not copied again every pass"
    now[0] += 60
    tracker.forwarder.forward(server, run, final=False)  # type: ignore[arg-type]
    assert server.uploads == {"None/model.pt": b"weights"}


def test_a_file_that_keeps_failing_to_copy_holds_up_no_other(
    lab: tuple[Tracker, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last read of a store whose first artifact never copies (EIO): the files after it,
    beyond what one pass takes, are still forwarded."""
    tracker, tmp = lab
    monkeypatch.setattr(relay, "_PASS_MAX_ARTIFACT_BYTES", 10)
    run, files = _relaying(tracker, tmp)
    for name in ("a-broken", "b", "c"):
        (files / "artifacts" / name).write_bytes(b"0123456789")
    copy = forward.copy_beneath

    def failing_for_a(root: Path, path: Any, *args: Any, **kwargs: Any) -> int:
        if path.name == "a-broken":
            raise OSError(errno.EIO, "Input/output error")
        return copy(root, path, *args, **kwargs)

    monkeypatch.setattr(forward, "copy_beneath", failing_for_a)
    server = RecordingServer()
    tracker.forwarder.forward(server, run, final=True)  # type: ignore[arg-type]
    assert sorted(server.uploads) == ["None/b", "None/c"]


def test_the_last_pass_forwards_everything_a_pass_at_a_time(
    lab: tuple[Tracker, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At an attempt's or the run's end the store is read for the last time: a metric file
    larger than a pass reads, and a param after a pass's budget is spent, are all forwarded."""
    tracker, tmp = lab
    monkeypatch.setattr(relay, "_PASS_MAX_BYTES", 8 * 1024 * 1024)
    run, files = _relaying(tracker, tmp)
    line = b"1700000000000 0.5 %d " + b"x" * 1000 + b"\n"  # what follows the step is ignored
    (files / "metrics" / "loss").write_bytes(b"".join(line % step for step in range(9000)))
    (files / "params" / "lr").write_text("0.1")
    server = RecordingServer()
    tracker.forwarder.forward(server, run, final=True)  # type: ignore[arg-type]
    steps = sorted(m.step for b in server.batches for m in b.metrics)
    assert steps == list(range(9000))
    assert [b.params for b in server.batches if b.params] == [{"lr": "0.1"}]
    assert max(len(b.metrics) for b in server.batches) < 9000, "each pass bounded"


def test_a_line_longer_than_a_pass_reads_is_passed_over(tmp_path: Path) -> None:
    """No metric line is 8 MB long: one that is, never ended, held its file still for ever."""
    root, run_dir = _store(tmp_path)
    (root / run_dir / "metrics" / "loss").write_bytes(b"x" * (8 * 1024 * 1024 + 9) + b"\n1 2 3\n")
    first = relay.collect(root, run_dir, {}, final=True)
    assert first.more and not first.batch.metrics
    second = relay.collect(root, run_dir, first.cursors, final=True)
    assert [(m.value, m.step) for m in second.batch.metrics] == [(2.0, 3)]
    assert not second.more


def test_a_job_cannot_relay_what_the_daemon_records(tmp_path: Path) -> None:
    """Slurm's figures, the code's commit and the data's version are the daemon's to say."""
    root, run_dir = _store(tmp_path)
    files = root / run_dir
    (files / "metrics" / "slurm.exit_code").write_text("1000 0 0\n")
    (files / "metrics" / "slurm.attempt.1.elapsed_s").write_text("1000 1 0\n")
    (files / "metrics" / "loss").write_text("1000 0.5 0\n")
    (files / "tags" / "slurm.state").write_text("COMPLETED")
    (files / "tags" / "mlflow.source.git.commit").write_text("0" * 40)
    (files / "tags" / "hpcops.data.mnist").write_text("forged")
    (files / "tags" / "note").write_text("mine")
    (files / "params" / "slurm.partition").write_text("gpu")
    (files / "params" / "lr").write_text("0.1")
    delta = relay.collect(root, run_dir, {}, final=True)
    assert [m.key for m in delta.batch.metrics] == ["loss"]
    assert delta.batch.tags == {"note": "mine"}
    assert delta.batch.params == {"lr": "0.1"}


def test_an_unreadable_artifacts_folder_costs_only_the_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, run_dir = _store(tmp_path)
    (root / run_dir / "metrics" / "loss").write_text("1000 0.5 0\n")
    (root / run_dir / "params" / "lr").write_text("0.1")
    listed = relay.list_beneath

    def listing(root: Path, relative_dir: PurePath, **kwargs: Any) -> list[str]:
        if relative_dir.name == "artifacts":  # chmod 000 by the job (the tests may run as root)
            raise PermissionError(errno.EACCES, "Permission denied", str(relative_dir))
        return listed(root, relative_dir, **kwargs)

    monkeypatch.setattr(relay, "list_beneath", listing)
    delta = relay.collect(root, run_dir, {}, final=False)
    assert [m.key for m in delta.batch.metrics] == ["loss"]
    assert delta.batch.params == {"lr": "0.1"}
    assert delta.artifacts == []


def test_artifacts_are_relayed_a_bounded_number_of_bytes_a_pass(
    lab: tuple[Tracker, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each pass copies them to the daemon's disk and uploads them: a job's 4 GB files (sparse:
    free to make) went all in one pass; the rest waits for the next, or the last's next one."""
    tracker, tmp = lab
    monkeypatch.setattr(relay, "_PASS_MAX_ARTIFACT_BYTES", 1000)
    run, files = _relaying(tracker, tmp)
    for name in ("a", "b", "c"):
        (files / "artifacts" / name).write_bytes(name.encode() * 600)
    first = relay.collect(tmp / "relay", files.relative_to(tmp / "relay"), {}, final=False)
    assert [a.path.name for a in first.artifacts] == ["a"] and first.more
    server = RecordingServer()
    tracker.forwarder.forward(server, run, final=True)  # type: ignore[arg-type]
    assert sorted(server.uploads) == ["None/a", "None/b", "None/c"]


def test_a_batch_the_server_took_is_not_sent_again_when_an_upload_fails_after_it(
    lab: tuple[Tracker, Path],
) -> None:
    from hpcops.errors import TrackingUnreachable

    class DownForUploads(RecordingServer):
        def upload(self, artifact_uri: str, local_path: Path, artifact_dir: str | None) -> None:
            raise TrackingUnreachable("upload: 503 for the test")

    tracker, tmp = lab
    run, files = _relaying(tracker, tmp)
    (files / "metrics" / "loss").write_text("1000 0.5 0\n")
    (files / "artifacts" / "model.pt").write_bytes(b"weights")
    with pytest.raises(TrackingUnreachable):
        tracker.forwarder.forward(DownForUploads(), run, final=False)  # type: ignore[arg-type]
    assert run.id is not None
    assert tracker.store.relay_cursors(run.id) == {"metric:loss": "11"}


@pytest.mark.parametrize("server_answers", [True, False])
def test_a_run_whose_relay_fails_while_the_server_answers_holds_up_no_other(
    lab: tuple[Tracker, Path], server_answers: bool
) -> None:
    """One run's upload fails with a 5xx while the server answers: the other runs' stores are
    still relayed in that pass. A server that does not answer is an outage: the pass stops,
    and the tracker backs off."""
    from hpcops.errors import TrackingUnreachable
    from hpcops.states import RunState

    class FailingOneFile(RecordingServer):
        def upload(self, artifact_uri: str, local_path: Path, artifact_dir: str | None) -> None:
            if local_path.name == "model.pt":
                raise TrackingUnreachable("upload: 503 for the test")
            super().upload(artifact_uri, local_path, artifact_dir)

        def answers(self) -> bool:
            return server_answers

    tracker, tmp = lab
    for run_id, artifact in ((7, "model.pt"), (8, "report.txt")):
        _, files = _relaying(tracker, tmp / artifact, run_id)
        (files / "artifacts" / artifact).write_bytes(b"x")
        for state in (RunState.SUBMITTING, RunState.PENDING):  # a job in Slurm
            tracker.store.transition(run_id, state, actor="daemon")
    server = FailingOneFile()
    if server_answers:
        tracker.forwarder.forward_all(server)  # type: ignore[arg-type]
        assert list(server.uploads) == ["None/report.txt"]
    else:
        with pytest.raises(TrackingUnreachable):
            tracker.forwarder.forward_all(server)  # type: ignore[arg-type]
