"""The engine's offline test tier: one builder of an engine over a fake Slurm and a fake clock.

Tests reach the engine only through its public behaviour (queue specs, tick, cancel, hold,
priority; then read runs and events from the store): `_build` below is the one place that knows
how `hpcops.engine.Engine` is constructed.

A crash is the engine's own fault point (HPCOPS_FAULT, passed as `fault=`): there the daemon
SIGKILLs itself. In a test, that kill raises `DaemonCrash` instead, which no `except Exception`
catches, and `EngineHarness.restart()` starts a new engine over the same database and the same
fake cluster, as the next daemon would.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import pytest

from hpcops.access import Caller
from hpcops.code.mirror import CodeMirror
from hpcops.config import Config
from hpcops.data.cache import ContentCache
from hpcops.engine import Engine
from hpcops.home import HomePaths
from hpcops.pipeline import pipeline_from_wire
from hpcops.slurm.backend import CommandBackend
from hpcops.spec import parse_spec
from hpcops.store import Run, Store
from hpcops.store.models import Event

from .fakeslurm import DaemonCrash, FakeClock, FakeSlurm

ALICE = Caller(uid=1001, name="alice")
BOB = Caller(uid=1002, name="bob")

# The test defaults: the dev cluster's account and partition; no MLflow (its own tests).
BASE_CONFIG: dict[str, Any] = {
    "slurm": {"account": "lab", "default_partition": "cpu", "squeue_interval_s": 30},
    "tracking": {"enabled": False},
}


class EngineLike(Protocol):
    """The engine's public methods these tests use (PLAN.md, contract 2)."""

    def tick(self, *, woken: bool = False) -> None: ...
    def enqueue(self, specs: Sequence[tuple[Any, str]], caller: Caller) -> list[Run]: ...
    def cancel(self, run_id: int, caller: Caller) -> tuple[Run, str]: ...
    def hold(self, run_id: int, caller: Caller) -> Run: ...
    def release_hold(self, run_id: int, caller: Caller) -> Run: ...
    def set_priority(self, run_id: int, priority: int, caller: Caller, note: str = "") -> Run: ...
    def top(self, run_id: int, caller: Caller) -> Run: ...
    def why(self, run: Run) -> str: ...
    def status(self) -> Any: ...
    def retry(self, run_id: int, caller: Caller) -> Run: ...
    def batch(self) -> AbstractContextManager[None]: ...
    def enqueue_pipeline(self, loaded: Any, caller: Caller) -> tuple[Any, list[Run]]: ...
    def rerun_step(
        self, pipeline_id: int, step: str, downstream: bool, caller: Caller
    ) -> list[Run]: ...


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class EngineHarness:
    """An engine over a real Store on tmp_path, the fake Slurm and the fake clock."""

    slurm: FakeSlurm
    clock: FakeClock
    config: Config
    home: Path
    db_path: Path
    fault: str | None
    store: Store = field(init=False)
    engine: EngineLike = field(init=False)

    def __post_init__(self) -> None:
        self.store = Store(self.db_path)
        self.engine = self._build(self.fault)
        self.slurm.task_run_dir = self._task_run_dir

    def _task_run_dir(self, script: PurePosixPath, task: int) -> PurePosixPath:
        """Where an array's task writes its markers: its point's run directory, as the array
        script's dispatch names it (hpcops/arrayscript.py)."""
        text = self.slurm.file(script) or ""
        found = re.search(rf"^{task}\)\n    hpcops_out=(\S+)$", text, re.MULTILINE)
        assert found, f"task {task} is not in the array script {script}"
        return PurePosixPath(shlex.split(found[1])[0]).parent

    def _build(self, fault: str | None) -> EngineLike:
        # The one place that knows how the engine is constructed (issue 11, contract 1).
        backend = CommandBackend(
            self.slurm, account=self.config.slurm.account, user=self.slurm.user
        )
        engine: EngineLike = Engine(
            self.store,
            backend,
            self.slurm,
            self.config,
            self.home,
            code_mirror=CodeMirror(
                self.config.code_root_in(self.home), state=HomePaths(self.home).mirror_state
            ),
            data_cache=ContentCache(self.config.data_cache_in(self.home)),
            clock=self.clock,
            fault=fault,
        )
        return engine

    # --- requests -------------------------------------------------------------------------

    def submit(
        self,
        name: str = "train",
        *,
        caller: Caller = ALICE,
        priority: int = 0,
        command: str = "python train.py",
        **spec: Any,
    ) -> int:
        """Queue one spec as `caller`; its run id."""
        [run_id] = self.submit_many(
            [{"name": name, "priority": priority, "command": command, **spec}], caller=caller
        )
        return run_id

    def submit_sweep(
        self, name: str = "sweep", *, caller: Caller = ALICE, **spec: Any
    ) -> tuple[int, list[int]]:
        """Queue one sweep spec (`sweep=` its block) as `caller`: its sweep id and point run ids,
        by point."""
        ids = self.submit_many([{"name": name, **spec}], caller=caller)
        sweep_id = self.run(ids[0]).sweep_id
        assert sweep_id is not None
        return sweep_id, sorted(ids, key=lambda i: self.run(i).sweep_index or 0)

    def submit_many(self, specs: list[dict[str, Any]], *, caller: Caller = ALICE) -> list[int]:
        parsed: list[tuple[Any, str]] = []
        for spec in specs:
            full = {"experiment": "offline", "command": "python train.py", **spec}
            # JSON is YAML 1.2: the spec goes through the daemon's own reader, once, as the API
            # parses it before handing it to the engine.
            source = f"{full['name']}.yaml"
            text = json.dumps(full)
            parsed.append((parse_spec(text, source), source))
        runs = self.engine.enqueue(parsed, caller)
        return [r.id for r in runs if r.id is not None]

    def submit_pipeline(
        self,
        steps: dict[str, dict[str, Any]],
        specs: dict[str, dict[str, Any]],
        *,
        name: str = "chain",
        caller: Caller = ALICE,
    ) -> tuple[int, dict[str, list[int]]]:
        """Queue a pipeline as `caller`: `steps` as a pipeline file writes them (a spec step's
        `spec:` is filled in), `specs` each spec step's spec. Its id and each step's run ids."""
        definition = {
            "name": name,
            "steps": {
                k: ({"spec": f"{k}.yaml"} if k in specs else {}) | v for k, v in steps.items()
            },
        }
        texts = {
            k: json.dumps({"name": k, "experiment": "offline", "command": "python train.py", **v})
            for k, v in specs.items()
        }
        wire = {"source": f"{name}.yaml", "definition": definition, "specs": texts}
        pipeline, runs = self.engine.enqueue_pipeline(pipeline_from_wire(wire), caller)
        by_step: dict[str, list[int]] = {}
        for run in runs:
            by_step.setdefault(run.pipeline_step or "", []).append(run.id or 0)
        assert pipeline.id is not None
        return pipeline.id, by_step

    def cancel(self, run_id: int, caller: Caller = ALICE) -> str:
        _, message = self.engine.cancel(run_id, caller)
        return message

    def hold(self, run_id: int, caller: Caller = ALICE) -> Run:
        return self.engine.hold(run_id, caller)

    def release_hold(self, run_id: int, caller: Caller = ALICE) -> Run:
        return self.engine.release_hold(run_id, caller)

    def set_priority(self, run_id: int, priority: int, caller: Caller = ALICE) -> Run:
        return self.engine.set_priority(run_id, priority, caller)

    def top(self, run_id: int, caller: Caller = ALICE) -> Run:
        return self.engine.top(run_id, caller)

    def why(self, run_id: int) -> str:
        return self.engine.why(self.run(run_id))

    def retry(self, run_id: int, caller: Caller = ALICE) -> Run:
        return self.engine.retry(run_id, caller)

    # --- the loop ---------------------------------------------------------------------------

    def tick(self, times: int = 1, *, every_s: float = 0.0) -> None:
        """`times` ticks, the clock moving `every_s` before each one after the first."""
        for i in range(times):
            if i and every_s:
                self.clock.advance(every_s)
            self.engine.tick()

    def run_for(self, seconds: float, *, every_s: float = 1.0) -> None:
        """Tick every `every_s` for `seconds` of fake time (the daemon's tick_interval_s)."""
        elapsed = 0.0
        while elapsed < seconds:
            self.clock.advance(every_s)
            elapsed += every_s
            self.engine.tick()

    def crash_tick(self) -> None:
        """A tick that must end at the armed fault point."""
        with pytest.raises(DaemonCrash):
            self.engine.tick()

    def restart(self, *, fault: str | None = None) -> None:
        """The daemon starts again: a new engine over the same database file and cluster."""
        self.store.close()
        self.store = Store(self.db_path)
        self.engine = self._build(fault)

    # --- what the store says ----------------------------------------------------------------

    def run(self, run_id: int) -> Run:
        return self.store.get(run_id)

    def state(self, run_id: int) -> str:
        return str(self.store.get(run_id).state)

    def events(self, run_id: int) -> list[Event]:
        return self.store.events(run_id)

    def states(self, run_id: int) -> list[str]:
        """Every state the run went through, in order (its history's state changes)."""
        return [str(e.to_state) for e in self.events(run_id) if e.to_state != e.from_state]

    def notes(self, run_id: int) -> list[str]:
        return [e.reason for e in self.events(run_id)]

    def attempts(self, run_id: int) -> list[tuple[int, str, str]]:
        """The run's ended attempts as (number, Slurm job id, state)."""
        return [(a.number, a.slurm_job_id, str(a.state)) for a in self.store.attempts(run_id)]

    def job_of(self, run_id: int) -> str:
        job_id = self.run(run_id).slurm_job_id
        assert job_id is not None, f"run {run_id} has no Slurm job: {self.states(run_id)}"
        return job_id

    def start_next(self, run_id: int) -> str:
        """Release the run's queued attempt into Slurm, start its job a second later and tick
        until the engine has it RUNNING; the job's id."""
        self.tick()
        job_id = self.job_of(run_id)
        self.clock.advance(1)
        self.slurm.start(job_id)
        self.tick()
        assert self.state(run_id) == "RUNNING"
        return job_id


EngineFactory = Callable[..., EngineHarness]


def build_harness(
    tmp_path: Path,
    config: dict[str, Any] | None = None,
    *,
    fault: str | None = None,
    clock: FakeClock | None = None,
    slurm: FakeSlurm | None = None,
) -> EngineHarness:
    clock = clock or FakeClock()
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return EngineHarness(
        slurm=slurm or FakeSlurm(clock),
        clock=clock,
        config=Config.model_validate(_merge(BASE_CONFIG, config or {})),
        home=home,
        db_path=tmp_path / "hpcops.db",
        fault=fault,
    )
