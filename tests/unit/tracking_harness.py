"""The tracking tests' lab: a store that tracks, a tracker on MLflow's own sqlite store (no
server), and a wrapper server that refuses, fails or "crashes" where a test needs it; shared by
test_tracking_sweeps.py, test_tracking_attempts.py and test_tracking_pipelines.py."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from hpcops.config import parse_config
from hpcops.errors import TrackingRejected, TrackingUnreachable
from hpcops.states import RunState
from hpcops.store import Run, Store, Sweep
from hpcops.tracking import parents
from hpcops.tracking.server import CreatedRun, TrackingServer
from hpcops.tracking.worker import Tracker

_TEMPLATE: list[Path] = []  # this process's empty store, its tables made once


def sqlite_mlflow(directory: Path) -> str:
    """A fresh MLflow sqlite store in `directory`, its tables made; its URI.

    MLflow makes a store's tables through its migrations, about 1.5 s on this machine; each test
    module's store is a copy of one made once per process (the offline tier promises to run in
    well under a minute). An empty store holds nothing of the directory it was made in but its
    Default experiment's artifact location, which MLflow takes from the working directory
    either way."""
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if not _TEMPLATE:
        made = Path(tempfile.mkdtemp(prefix="hpcops-mlflow-template-")) / "mlflow.db"
        atexit.register(shutil.rmtree, made.parent, True)  # the process's own: gone with it
        TrackingServer(f"sqlite:///{made}", artifact_root=made.parent / "artifacts")
        _TEMPLATE.append(made)
    path = directory / "mlflow.db"
    shutil.copyfile(_TEMPLATE[0], path)
    return f"sqlite:///{path}"


POINTS = [{"lr": 0.1, "seed": 1}, {"lr": 0.03, "seed": 1}, {"lr": 0.01, "seed": 1}]
SWEEP_SPEC = """\
name: resnet-lr
experiment: {experiment}
command: python train.py
params: {{epochs: 3, lr: 0.5}}
tags: {{paper: neurips}}
sweep:
  random: {{samples: 3, seed: 11, space: {{lr: {{loguniform: [0.0001, 0.1]}}}}}}
  objective: {{metric: val_accuracy, mode: {mode}}}
  max_parallel: 2
"""


class Clock:
    """Real time (MLflow's timestamps stay sane), moved on by the tests."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Faulty(TrackingServer):
    """The real store, with a fault where a test wants one: `refuse` / `fail` make a parent's
    (a sweep's or a pipeline's) creation refused or unanswered, `crash_after_create` raises
    after the parent was created on the server (the daemon killed before it stored the id)."""

    refuse: ClassVar[bool] = False
    fail: ClassVar[bool] = False
    crash_after_create: ClassVar[bool] = False
    crash_after_child: ClassVar[bool] = False
    creates: ClassVar[list[dict[str, str]]] = []

    def _parent(self, tags: dict[str, str]) -> bool:
        return tags.get(parents.KIND_TAG) in ("sweep", "pipeline")

    def create_run(
        self, experiment_id: str, *, name: str, user: str, start_ms: int, tags: dict[str, str]
    ) -> CreatedRun:
        if self._parent(tags) and self.refuse:
            raise TrackingRejected("create run: RESOURCE_DOES_NOT_EXIST: refused for the test")
        if self._parent(tags) and self.fail:
            raise TrackingUnreachable("create run: 503 for the test")
        created = super().create_run(
            experiment_id, name=name, user=user, start_ms=start_ms, tags=tags
        )
        Faulty.creates.append(tags)
        if self._parent(tags) and self.crash_after_create:
            raise KeyboardInterrupt("kill -9")  # nothing in the tracker catches it
        if not self._parent(tags) and self.crash_after_child:
            raise KeyboardInterrupt("kill -9")
        return created


class Lab:
    def __init__(self, tmp: Path, uri: str, clock: Clock) -> None:
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)
        self.store = Store(self.home / "hpcops.db", track=True)
        self.config = parse_config(
            f"lab: t\nrun_root: {tmp / 'runs'}\ntracking: {{tracking_uri: '{uri}'}}\n", "c.yaml"
        )
        self.uri = uri
        self.clock = clock
        self.experiment = f"sweeps-{tmp.name}"
        self.tracker = self.restart()

    def restart(self) -> Tracker:
        def factory(uri: str, root: Path | None) -> TrackingServer:
            return Faulty(uri, artifact_root=self.home / "mlartifacts")

        self.tracker = Tracker(
            self.store, self.config, self.home, server_factory=factory, clock=self.clock
        )
        return self.tracker

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def add_sweep(self, *, mode: str = "max", n: int = 3, metric: str | None = "val_accuracy"):  # type: ignore[no-untyped-def]
        sweep = self.sweep_row(mode=mode, n=n, metric=metric)
        runs = [self.point(i) for i in range(n)]
        return self.store.add_sweep(sweep, runs, actor="ana")

    def sweep_row(
        self, *, mode: str = "max", n: int = 3, metric: str | None = "val_accuracy"
    ) -> Sweep:
        spec = SWEEP_SPEC.format(experiment=self.experiment, mode=mode)
        return Sweep(
            name="resnet-lr",
            experiment=self.experiment,
            owner="ana",
            owner_uid=1000,
            spec_yaml=spec,
            kind="random",
            n_points=n,
            points_json=json.dumps(POINTS[:n]),
            objective_metric=metric,
            objective_mode=mode if metric else None,
            max_parallel=2,
            created_at=time.time(),
            updated_at=time.time(),
        )

    def point(self, index: int, sweep_id: int | None = None) -> Run:
        params = {"epochs": 3, **POINTS[index]}
        run = self.run_row("resnet-lr", params)
        run.name, run.sweep_id, run.sweep_index = f"resnet-lr[{index}]", sweep_id, index
        return run

    def run_row(self, name: str, params: dict[str, Any]) -> Run:
        """A queued run of a spec named `name` with these params (not stored)."""
        spec = (
            f"name: {name}\nexperiment: {self.experiment}\ncommand: python train.py\n"
            f"params: {json.dumps(params)}\n"
        )
        return Run(
            name=name,
            experiment=self.experiment,
            owner="ana",
            owner_uid=1000,
            state=RunState.QUEUED,
            spec_yaml=spec,
            spec_hash="h",
            created_at=time.time(),
            updated_at=time.time(),
        )

    def end(self, run_id: int, state: RunState) -> None:
        run = self.store.get(run_id)
        if state != RunState.CANCELLED or run.state != RunState.QUEUED:
            for step in (RunState.SUBMITTING, RunState.PENDING, RunState.RUNNING):
                self.store.transition(run_id, step, actor="daemon", slurm_job_id=f"9{run_id}")
        self.store.transition(run_id, state, actor="daemon", ended_at=time.time())

    def log(self, run_id: int, values: list[float], key: str = "val_accuracy") -> None:
        mlflow_id = self.store.get(run_id).mlflow_run_id
        assert mlflow_id is not None
        for step, value in enumerate(values, start=1):
            self.client().log_metric(mlflow_id, key, value, step=step)

    def drain(self) -> None:
        """Tracker steps until nothing is due (one operation per run and lane a step)."""
        for _ in range(20):
            self.tracker.step()
            if not self.store.tracking_due(self.clock()):
                return
        health = self.tracker.health
        raise AssertionError(
            f"still due: {self.store.tracking_due(self.clock())}; the tracker's last error: "
            f"{health.last_error!r}, retrying at {health.retry_at - self.clock():+.1f} s"
        )

    def sweep(self, sweep_id: int) -> Sweep:
        return self.store.get_sweep(sweep_id)

    def parents_of(self, sweep_id: int) -> list[Any]:
        exp = self.client().get_experiment_by_name(self.experiment)
        return list(
            self.client().search_runs(
                [exp.experiment_id],
                f"tags.`hpcops.kind` = 'sweep' and tags.`hpcops.sweep_id` = '{sweep_id}'",
            )
        )
