"""The jobs go into Slurm before their records are made (Tracker.releasing): while the loop
releases runs, the tracking thread makes no record, and it makes them once the release ends; a
release longer than _MAX_YIELD_S holds them back that long at most."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from tracking_harness import Clock, Lab, sqlite_mlflow

from hpcops.tracking import worker

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return sqlite_mlflow(tmp_path_factory.mktemp("mlflow"))


def _queued(lab: Lab) -> int:
    run = lab.store.add_run(lab.run_row("train", {"lr": 0.1}), actor="ana")
    assert run.id is not None
    return run.id


def _step_in_background(lab: Lab) -> threading.Thread:
    thread = threading.Thread(target=lab.tracker.step, daemon=True)
    thread.start()
    return thread


def test_records_wait_while_runs_are_released_then_are_made(
    tmp_path: Path, mlflow_uri: str
) -> None:
    lab = Lab(tmp_path, mlflow_uri, Clock())
    run_id = _queued(lab)
    with lab.tracker.releasing():
        thread = _step_in_background(lab)
        thread.join(0.5)
        assert thread.is_alive(), "the tracking step waits for the release"
        assert lab.store.get(run_id).mlflow_run_id is None
    thread.join(30)
    assert not thread.is_alive()
    assert lab.store.get(run_id).mlflow_run_id is not None, "made once the release ended"
    lab.drain()  # and the outbox holds nothing more for it
    assert not lab.store.tracking_due(lab.clock())


def test_a_release_that_long_shares_the_process_again(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "_MAX_YIELD_S", 0.2)
    lab = Lab(tmp_path, mlflow_uri, Clock())
    run_id = _queued(lab)
    with lab.tracker.releasing():
        started = time.monotonic()
        thread = _step_in_background(lab)
        thread.join(30)
        assert not thread.is_alive(), "records are not left behind a release for ever"
        assert lab.store.get(run_id).mlflow_run_id is not None
    assert time.monotonic() - started >= 0.2
