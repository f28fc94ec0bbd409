"""Promotion in MLflow's Model Registry: the pure rule (table-driven), then promote against
MLflow's own sqlite store (it holds the registry too; no server), with a real scikit-learn model
in each run's artifacts and, once, as an MLflow 3 logged model."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from tracking_harness import sqlite_mlflow

from hpcops.errors import TrackingRejected, TrackingUnreachable
from hpcops.tracking import registry
from hpcops.tracking.registry import UNMEASURED, Decision, Mode, decide, promote

pytest.importorskip("sklearn")

# --- the rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "holder", "mode", "move", "margin", "says"),
    [
        (0.9, None, "max", True, None, "nothing holds the alias"),
        (0.9, None, "min", True, None, "nothing holds the alias"),
        (0.93, 0.91, "max", True, pytest.approx(0.02), "beats 0.91 by 0.02"),
        (0.89, 0.91, "max", False, pytest.approx(-0.02), "worse than 0.91 by 0.02"),
        (0.91, 0.91, "max", False, 0.0, "ties"),
        (0.2, 0.3, "min", True, pytest.approx(0.1), "beats 0.3 by 0.1 (min)"),
        (0.4, 0.3, "min", False, pytest.approx(-0.1), "worse than 0.3 by 0.1 (min)"),
        (0.3, 0.3, "min", False, 0.0, "ties"),
        (None, 0.91, "max", False, None, "logged no test_accuracy"),
        (None, None, "max", False, None, "logged no test_accuracy"),  # else nothing could beat it
        (math.nan, None, "max", False, None, "is NaN"),
        (0.9, UNMEASURED, "max", False, None, "holder has no test_accuracy"),
        (0.9, math.nan, "max", False, None, "holder has no test_accuracy"),
        (math.inf, 0.5, "max", True, math.inf, "beats"),
        (-1.0, 0.0, "min", True, 1.0, "beats 0 by 1"),
    ],
)
def test_decide(
    candidate: float | None,
    holder: Any,
    mode: Mode,
    move: bool,
    margin: Any,
    says: str,
) -> None:
    decision = decide(candidate, holder, mode, metric="test_accuracy")
    assert decision.move is move
    assert decision.margin == margin
    assert says in decision.reason


def test_decide_is_plain_data() -> None:
    assert decide(0.5, 0.4, "max") == Decision(
        True, "the metric 0.5 beats 0.4 by 0.1 (max)", pytest.approx(0.1)
    )


ALIASES = [
    "champion",
    "Champion-2",
    "a_b",
    "ünï",
    "latest",
    "LATEST",
    "v1",
    "V12",
    "v1a",
    "",
    "bad alias",
    "x/y",
    "a.b",
    "x" * 255,
    "x" * 256,
]


@pytest.mark.parametrize("alias", ALIASES)
def test_alias_problem_agrees_with_mlflow(alias: str) -> None:
    """The pure check refuses exactly what MLflow's own validation refuses."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    try:
        validation._validate_model_alias_name(alias)
        validation._validate_model_alias_name_reserved(alias)
        mlflow_refuses = False
    except MlflowException:
        mlflow_refuses = True
    assert (registry.alias_problem(alias) is not None) is mlflow_refuses


@pytest.mark.parametrize("name", ["digits", "digits v2", "o'brien", "a/b", "a:b", "", "  "])
def test_model_name_problem_agrees_with_mlflow(name: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    try:
        validation._validate_model_name(name)
        mlflow_refuses = False
    except MlflowException:
        mlflow_refuses = True
    assert (registry.model_name_problem(name) is not None) is mlflow_refuses


# --- promote against a real registry ------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield Lab(tmp_path_factory.mktemp("registry"))


class Lab:
    """One sqlite MLflow store for the module (creating one costs seconds), one saved model."""

    def __init__(self, tmp: Path) -> None:
        import mlflow.sklearn
        from mlflow.tracking import MlflowClient
        from sklearn.linear_model import LogisticRegression

        self.uri = sqlite_mlflow(tmp)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = self.client.create_experiment(
            "promotions", artifact_location=(tmp / "artifacts").as_uri()
        )
        self.model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        self.saved = tmp / "saved-model"
        mlflow.sklearn.save_model(self.model, str(self.saved), pip_requirements=["scikit-learn"])
        self._names = count()

    def name(self) -> str:
        """A registered model name of the test's own."""
        return f"digits-{next(self._names)}"

    def run(self, metrics: dict[str, float], *, model: bool = True, path: str = "model") -> str:
        """A finished run with these metrics and, unless told otherwise, the model in its
        artifacts under `path` (as a job that saved its model and logged the directory)."""
        run = self.client.create_run(self.experiment_id)
        run_id: str = run.info.run_id
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, value)
        if model:
            self.client.log_artifacts(run_id, str(self.saved), path)
        self.client.set_terminated(run_id)
        return run_id

    def versions(self, name: str) -> list[Any]:
        return sorted(
            self.client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
        )

    def holder(self, name: str, alias: str = "champion") -> str | None:
        return self.client.get_registered_model(name).aliases.get(alias)


Promote = Callable[..., registry.Promotion]


@pytest.fixture
def promote_in(lab: Lab) -> Promote:
    def call(run_id: str, name: str, *, metric: str | None = "test_accuracy", **kw: Any) -> Any:
        args: dict[str, Any] = {"artifact_path": "model", "alias": "champion", "mode": "max"}
        args.update(kw)
        return promote(lab.uri, run_id, model_name=name, metric=metric, **args)

    return call


def test_first_promotion_moves_the_alias(lab: Lab, promote_in: Promote) -> None:
    name = lab.name()
    run_id = lab.run({"test_accuracy": 0.9})
    done = promote_in(run_id, name)
    assert (done.version, done.moved, done.registered) == ("1", True, True)
    assert done.holder_version is None and done.margin is None
    assert lab.holder(name) == 1
    [version] = lab.versions(name)
    assert version.run_id == run_id
    assert version.source.endswith(f"/{run_id}/artifacts/model")
    assert version.tags[registry.DECISION_TAG] == "moved"
    assert version.tags[registry.METRIC_TAG] == "test_accuracy max"
    assert version.tags[registry.VALUE_TAG] == "0.9"
    assert "nothing holds the alias" in version.tags[registry.REASON_TAG]


def test_the_registered_version_loads_as_the_model(
    lab: Lab, promote_in: Promote, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc

    name = lab.name()
    promote_in(lab.run({"test_accuracy": 0.9}), name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lab.uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert list(loaded.predict([[0.0], [3.0]])) == [0, 1]


def test_a_better_candidate_takes_the_alias_and_says_by_how_much(
    lab: Lab, promote_in: Promote
) -> None:
    name = lab.name()
    promote_in(lab.run({"test_accuracy": 0.9}), name)
    done = promote_in(lab.run({"test_accuracy": 0.95}), name)
    assert (done.version, done.moved, done.holder_version) == ("2", True, "1")
    assert done.holder_value == 0.9
    assert done.margin == pytest.approx(0.05)
    assert lab.holder(name) == 2
    tags = lab.versions(name)[1].tags
    assert tags[registry.DECISION_TAG] == "moved"
    assert tags[registry.HOLDER_TAG] == "1"
    assert tags[registry.HOLDER_VALUE_TAG] == "0.9"
    assert float(tags[registry.MARGIN_TAG]) == pytest.approx(0.05)
    assert "beats 0.9 by 0.05" in tags[registry.REASON_TAG]


@pytest.mark.parametrize(("value", "says"), [(0.85, "worse than 0.9 by 0.05"), (0.9, "ties")])
def test_a_worse_or_equal_candidate_is_registered_but_keeps_out(
    lab: Lab, promote_in: Promote, value: float, says: str
) -> None:
    name = lab.name()
    promote_in(lab.run({"test_accuracy": 0.9}), name)
    done = promote_in(lab.run({"test_accuracy": value}), name)
    assert (done.version, done.moved, done.registered) == ("2", False, True)
    assert done.holder_version == "1"
    assert lab.holder(name) == 1
    tags = lab.versions(name)[1].tags
    assert tags[registry.DECISION_TAG] == "kept"
    assert says in tags[registry.REASON_TAG]
    assert float(tags[registry.MARGIN_TAG]) == pytest.approx(value - 0.9)


def test_mode_min_takes_the_lower_value(lab: Lab, promote_in: Promote) -> None:
    name = lab.name()
    promote_in(lab.run({"val_loss": 0.30}), name, metric="val_loss", mode="min")
    lower = promote_in(lab.run({"val_loss": 0.25}), name, metric="val_loss", mode="min")
    higher = promote_in(lab.run({"val_loss": 0.40}), name, metric="val_loss", mode="min")
    assert (lower.moved, higher.moved) == (True, False)
    assert lower.margin == pytest.approx(0.05)
    assert higher.margin == pytest.approx(-0.15)
    assert lab.holder(name) == 2
    assert lab.versions(name)[2].tags[registry.METRIC_TAG] == "val_loss min"


def test_a_candidate_without_the_metric_is_registered_and_kept_out(
    lab: Lab, promote_in: Promote
) -> None:
    name = lab.name()
    first = promote_in(lab.run({"other": 1.0}), name)
    assert (first.version, first.moved, first.candidate_value) == ("1", False, None)
    assert lab.holder(name) is None
    assert "logged no test_accuracy" in lab.versions(name)[0].tags[registry.REASON_TAG]
    promote_in(lab.run({"test_accuracy": 0.9}), name)
    late = promote_in(lab.run({"other": 1.0}), name)
    assert (late.moved, late.holder_version) == (False, "2")
    assert lab.holder(name) == 2


def test_a_holder_without_the_metric_is_not_replaced(lab: Lab, promote_in: Promote) -> None:
    """The alias set by hand on a version whose run logged another metric: no number beats it."""
    name = lab.name()
    promote_in(lab.run({"accuracy": 0.99}), name, metric=None)  # no if_better: it takes the alias
    done = promote_in(lab.run({"test_accuracy": 0.95}), name)
    assert (done.moved, done.holder_version, done.holder_value) == (False, "1", None)
    assert "holder has no test_accuracy" in done.reason
    assert lab.holder(name) == 1


def test_without_if_better_every_version_takes_the_alias(lab: Lab, promote_in: Promote) -> None:
    name = lab.name()
    promote_in(lab.run({"test_accuracy": 0.9}), name, metric=None)
    done = promote_in(lab.run({"test_accuracy": 0.1}), name, metric=None)
    assert (done.version, done.moved) == ("2", True)
    assert lab.holder(name) == 2
    assert registry.METRIC_TAG not in lab.versions(name)[1].tags


def test_a_run_without_the_model_is_refused_and_nothing_registered(
    lab: Lab, promote_in: Promote
) -> None:
    name = lab.name()
    run_id = lab.run({"test_accuracy": 0.99}, model=False)
    with pytest.raises(TrackingRejected) as caught:
        promote_in(run_id, name)
    message = str(caught.value)
    assert f"run {run_id} has no model at 'model'" in message
    assert "mlflow.sklearn.log_model(model, name='model')" in message
    assert lab.versions(name) == []


def test_a_model_under_another_path_is_not_the_model(lab: Lab, promote_in: Promote) -> None:
    name = lab.name()
    run_id = lab.run({"test_accuracy": 0.99}, path="classifier")
    with pytest.raises(TrackingRejected, match="no model at 'model'"):
        promote_in(run_id, name)
    done = promote_in(run_id, name, artifact_path="classifier")
    assert done.moved
    assert lab.versions(name)[0].source.endswith("/artifacts/classifier")


@pytest.mark.parametrize("alias", ["latest", "v2", "two words"])
def test_an_alias_mlflow_refuses_registers_nothing(
    lab: Lab, promote_in: Promote, alias: str
) -> None:
    """MLflow refuses a bad alias only when it is set, after the version exists: checked first."""
    name = lab.name()
    with pytest.raises(TrackingRejected, match=f"as {alias!r}: "):
        promote_in(lab.run({"test_accuracy": 0.9}), name, alias=alias)
    assert lab.versions(name) == []


def test_a_name_with_quotes_is_found_again(lab: Lab, promote_in: Promote) -> None:
    name = f'{lab.name()} o\'brien "v2"'
    run_id = lab.run({"test_accuracy": 0.9})
    promote_in(run_id, name)
    assert promote_in(run_id, name).registered is False
    versions = lab.client.search_model_versions(f"run_id = '{run_id}'")
    assert [(v.name, v.version) for v in versions] == [(name, 1)]


def test_no_such_run_is_refused(lab: Lab, promote_in: Promote) -> None:
    with pytest.raises(TrackingRejected, match="RESOURCE_DOES_NOT_EXIST"):
        promote_in("0" * 32, lab.name())


def test_promoting_twice_registers_one_version(lab: Lab, promote_in: Promote) -> None:
    name = lab.name()
    promote_in(lab.run({"test_accuracy": 0.9}), name)
    run_id = lab.run({"test_accuracy": 0.95})
    first = promote_in(run_id, name)
    again = promote_in(run_id, name)
    assert (first.version, first.registered) == ("2", True)
    assert (again.version, again.registered, again.moved) == ("2", False, True)
    assert again.reason == first.reason
    assert (again.holder_version, again.margin) == ("1", pytest.approx(0.05))
    assert len(lab.versions(name)) == 2
    assert lab.holder(name) == 2


def test_promoting_a_worse_run_twice_registers_one_version(lab: Lab, promote_in: Promote) -> None:
    name = lab.name()
    promote_in(lab.run({"test_accuracy": 0.9}), name)
    run_id = lab.run({"test_accuracy": 0.8})
    promote_in(run_id, name)
    again = promote_in(run_id, name)
    assert (again.version, again.registered, again.moved) == ("2", False, False)
    assert len(lab.versions(name)) == 2
    assert lab.holder(name) == 1


def test_a_crash_between_registering_and_moving_is_finished_by_the_retry(
    lab: Lab, promote_in: Promote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon killed after the version exists but before the alias moved: the retry finds
    that version, decides again and moves the alias; one version in all."""
    name = lab.name()
    promote_in(lab.run({"test_accuracy": 0.9}), name)
    run_id = lab.run({"test_accuracy": 0.95})
    _killed_before_the_alias(monkeypatch, lambda: promote_in(run_id, name))
    assert lab.holder(name) == 1
    done = promote_in(run_id, name)
    assert (done.version, done.registered, done.moved) == ("2", False, True)
    assert done.holder_version == "1"
    assert len(lab.versions(name)) == 2
    assert lab.holder(name) == 2


def test_a_retry_decides_against_the_holder_of_that_moment(
    lab: Lab, promote_in: Promote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a crashed attempt and its retry, a better model took the alias: the retry
    registers nothing, keeps out and rewrites the version's record to say so."""
    name = lab.name()
    promote_in(lab.run({"test_accuracy": 0.9}), name)
    run_id = lab.run({"test_accuracy": 0.95})
    _killed_before_the_alias(monkeypatch, lambda: promote_in(run_id, name))
    promote_in(lab.run({"test_accuracy": 0.97}), name)  # version 3 takes it from 1
    done = promote_in(run_id, name)
    assert (done.version, done.registered, done.moved) == ("2", False, False)
    assert done.holder_version == "3"
    tags = lab.versions(name)[1].tags
    assert (tags[registry.DECISION_TAG], tags[registry.HOLDER_TAG]) == ("kept", "3")
    assert lab.holder(name) == 3


def test_a_retry_drops_what_no_longer_holds(
    lab: Lab, promote_in: Promote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias removed by hand between a crashed attempt and its retry: the retry finds no
    holder, moves the alias, and the version no longer names a holder it was compared with."""
    name = lab.name()
    promote_in(lab.run({"test_accuracy": 0.9}), name)
    run_id = lab.run({"test_accuracy": 0.95})
    _killed_before_the_alias(monkeypatch, lambda: promote_in(run_id, name))
    assert lab.versions(name)[1].tags[registry.HOLDER_TAG] == "1"
    lab.client.delete_registered_model_alias(name, "champion")
    done = promote_in(run_id, name)
    assert (done.version, done.moved, done.holder_version) == ("2", True, None)
    tags = lab.versions(name)[1].tags
    assert registry.HOLDER_TAG not in tags and registry.MARGIN_TAG not in tags
    assert "nothing holds the alias" in tags[registry.REASON_TAG]
    assert lab.holder(name) == 2


def test_an_mlflow3_logged_model_is_found_by_its_name(
    lab: Lab, promote_in: Promote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mlflow.sklearn.log_model(m, name="model") keeps the files outside the run's artifacts,
    as a logged model whose source run is the run; it is registered from the logged model's
    location, with no global tracking URI set (the daemon sets none)."""
    import mlflow
    import mlflow.sklearn

    run_id = lab.run({"test_accuracy": 0.9}, model=False)
    with monkeypatch.context() as patched:
        patched.setenv("MLFLOW_TRACKING_URI", lab.uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.sklearn.log_model(
                lab.model, name="model", pip_requirements=["scikit-learn"]
            )
    assert "MLFLOW_TRACKING_URI" not in os.environ
    name = lab.name()
    done = promote_in(run_id, name)
    assert done.moved
    [version] = lab.versions(name)
    assert version.source == lab.client.get_logged_model(info.model_id).artifact_location
    assert version.run_id == run_id
    assert promote_in(run_id, name).registered is False


def test_an_unreachable_server_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(TrackingUnreachable):
        promote("http://127.0.0.1:9", "0" * 32, "model", "digits", "champion", "acc", "max")


def _killed_before_the_alias(monkeypatch: pytest.MonkeyPatch, attempt: Callable[[], Any]) -> None:
    """The daemon killed -9 after the version was registered, before the alias moved."""
    from mlflow.tracking import MlflowClient

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("kill -9")  # nothing in promote catches it

    with monkeypatch.context() as patched:
        patched.setattr(MlflowClient, "set_registered_model_alias", killed)
        with pytest.raises(KeyboardInterrupt):
            attempt()
