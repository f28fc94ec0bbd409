"""A relay store stamped from the template FileStore taught (tracking/relay_template.py) is one
MLflow's FileStore reads, writes and finds as its own; a template it cannot stamp is not used."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hpcops.tracking import relay, relay_template


@pytest.fixture(autouse=True)
def _file_store_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as tracking.server sets it


def test_a_stamped_store_is_one_filestore_reads_and_logs_into(tmp_path: Path) -> None:
    from mlflow.entities import ViewType
    from mlflow.store.tracking.file_store import FileStore

    learnt = relay_template.learn_template()
    assert learnt is not None
    root = tmp_path / "run-000007" / "mlflow"
    root.parent.mkdir()
    run_id = learnt.stamp(root, run_name="digits", user="ana", now_ms=1_795_400_000_123)
    store = FileStore(str(root))
    run = store.get_run(run_id)
    assert (run.info.run_id, run.info.run_name, run.info.user_id) == (run_id, "digits", "ana")
    assert run.info.start_time == 1_795_400_000_123 and run.info.status == "RUNNING"
    assert run.info.artifact_uri == (root / "0" / run_id / "artifacts").as_uri()
    assert run.data.tags["mlflow.runName"] == "digits"
    assert store.get_experiment("0").artifact_location == (root / "0").as_uri()
    found = store.search_runs(["0"], None, ViewType.ALL, max_results=5)
    assert [r.info.run_id for r in found] == [run_id]
    store.log_param(run_id, _param("lr", "0.1"))
    assert store.get_run(run_id).data.params == {"lr": "0.1"}
    assert sorted(p.name for p in root.parent.iterdir()) == ["mlflow"], "no partial folder left"


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value)


def test_prepare_stamps_a_new_store_and_finds_it_again(tmp_path: Path) -> None:
    made = relay.prepare(tmp_path / "relay", run_name="r", user="u")
    assert relay.prepare(tmp_path / "relay", run_name="r", user="u") == made
    assert (made.run_dir / "meta.yaml").is_file()


def test_a_store_in_the_way_is_never_stamped_over(tmp_path: Path) -> None:
    learnt = relay_template.learn_template()
    assert learnt is not None
    root = tmp_path / "relay"
    (root / "0").mkdir(parents=True)
    (root / "0" / "keep").write_text("someone's")
    with pytest.raises(OSError):
        learnt.stamp(root, run_name="r", user="u", now_ms=1)
    assert (root / "0" / "keep").read_text() == "someone's"
    assert [p.name for p in tmp_path.iterdir()] == ["relay"], "its partial folder removed"


EXPERIMENT = {
    "artifact_location": "file:///scratch/store/0",
    "creation_time": 1,
    "last_update_time": 1,
    "experiment_id": "0",
    "lifecycle_stage": "active",
    "name": "Default",
}
RUN = {
    "artifact_uri": "file:///scratch/store/0/abc/artifacts",
    "run_id": "abc",
    "run_name": "r",
    "user_id": "u",
    "start_time": 0,
    "experiment_id": "0",
    "status": 1,
}


@pytest.mark.parametrize(
    ("experiment", "run"),
    [
        ({k: v for k, v in EXPERIMENT.items() if k != "artifact_location"}, RUN),
        (EXPERIMENT, {k: v for k, v in RUN.items() if k != "run_id"}),
        ({**EXPERIMENT, "experiment_id": "1"}, RUN),
        ({**EXPERIMENT, "trace_location": "file:///scratch/store/traces"}, RUN),
        (EXPERIMENT, {**RUN, "outputs": ["/scratch/store/0/abc/out"]}),
        ([EXPERIMENT], RUN),
    ],
    ids=["no-location", "no-run-id", "other-experiment", "another-path", "nested-path", "list"],
)
def test_a_template_it_cannot_stamp_is_refused(experiment: Any, run: Any) -> None:
    assert relay_template.template_from(experiment, run, "/scratch/store") is None


def test_the_template_it_can_stamp(tmp_path: Path) -> None:
    learnt = relay_template.template_from(EXPERIMENT, {**RUN, "run_uuid": "abc"}, "/scratch/store")
    assert learnt is not None
    run_id = learnt.stamp(tmp_path / "s", run_name="n", user="v", now_ms=5)
    text = (tmp_path / "s" / "0" / run_id / "meta.yaml").read_text()
    assert f"run_uuid: {run_id}" in text and "/scratch/" not in text
    assert os.listdir(tmp_path / "s" / "0" / run_id / "tags") == ["mlflow.runName"]
