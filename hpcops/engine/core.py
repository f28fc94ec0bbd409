"""The engine's public face: the one class the daemon builds, and the only way the API, the
daemon and the schedules talk to the engine (methods, never attributes)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from hpcops import policy
from hpcops.access import Caller
from hpcops.code.mirror import CodeMirror, Shipment
from hpcops.config import Config
from hpcops.data.cache import ContentCache
from hpcops.data.versions import DataVersion
from hpcops.engine import intake, loop, pipelines, release, requests
from hpcops.engine.state import EngineStatus, LoopState, Parts
from hpcops.jobcontext import Placement
from hpcops.pipeline import Pipeline as LoadedPipeline
from hpcops.slurm.backend import SlurmBackend
from hpcops.slurm.parse import Partition
from hpcops.spec import Spec
from hpcops.states import RunState
from hpcops.store import Pipeline, PipelineStep, Run, StepRuns, Store, Sweep
from hpcops.transport.base import Transport

if TYPE_CHECKING:
    from hpcops.tracking.worker import Tracker


class Engine:
    """Follows the lab's jobs, repairs what a crash left, releases queued runs (engine/loop.py);
    accepts specs (intake.py) and members' requests about runs (requests.py).

    Every collaborator is passed in (daemon.py builds the real ones; tests pass fakes)."""

    def __init__(
        self,
        store: Store,
        slurm: SlurmBackend,
        files: Transport,
        config: Config,
        home: Path,
        *,
        code_mirror: CodeMirror,
        data_cache: ContentCache,
        tracker: Tracker | None = None,
        clock: Callable[[], float] = time.time,
        fault: str | None = None,
    ) -> None:
        self._parts = Parts(
            store=store,
            slurm=slurm,
            files=files,
            config=config,
            home=home,
            code_mirror=code_mirror,
            data_cache=data_cache,
            tracker=tracker,
            clock=clock,
            fault=fault,
            placement=Placement.of(config, home),
        )
        self._state = LoopState()

    # --- the loop -----------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        loop.run_forever(self._parts, self._state, stop)

    def tick(self, *, woken: bool = False) -> None:
        """One pass of the loop (`woken`: a request asked for it, see loop.tick)."""
        loop.tick(self._parts, self._state, woken=woken)

    def wake(self) -> None:
        """End the loop's wait now: a tick runs at once."""
        self._state.wake.set()

    def wait_first_tick(self, timeout: float | None = None) -> bool:
        """Whether a tick has run (the first is the start-up reconciliation), waiting at most
        `timeout` seconds for it."""
        return self._state.ticked.wait(timeout)

    def changed(self) -> None:
        """Something release depends on changed (a quota, a schedule's run): plan again now."""
        self._state.changed()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Changes made inside are seen by release all at once: a sweep's points released or
        reprioritised one by one still go into Slurm together, as one array."""
        with self._state.batch:
            yield

    def status(self) -> EngineStatus:
        s = self._state
        return EngineStatus(
            health=dataclasses.replace(s.health),
            last_poll_at=s.last_queue_at,
            decision=s.last_decision,
            usage=dict(s.usage),
        )

    # --- accepting specs ----------------------------------------------------------------------

    def check_spec(self, spec: Spec, source: str) -> None:
        """What only the cluster and the config can say about a spec, before it is queued."""
        intake.check_spec(self._parts, self._state, spec, source)

    def enqueue(
        self,
        specs: Sequence[tuple[Spec, str]],
        caller: Caller,
        shipments: Sequence[Shipment | None] | None = None,
    ) -> list[Run]:
        """Queue specs given as (spec, source name): all of them, or none."""
        return intake.enqueue(self._parts, self._state, specs, caller, shipments)

    def prepare_run(self, spec: Spec, source: str, caller: Caller) -> Run:
        """A run of the spec, checked as `enqueue` checks it, not yet stored (schedules)."""
        return intake.prepare_run(self._parts, self._state, spec, source, caller)

    def current_data(self, spec: Spec, source: str, caller: Caller) -> list[DataVersion]:
        """The data versions a run of the spec queued now would stage (schedules)."""
        return intake.current_data(self._parts, spec, source, caller)

    def partitions(self) -> dict[str, Partition]:
        """Partition limits, cached; the old ones (or none) while Slurm does not answer."""
        return intake.partitions(self._parts, self._state)

    # --- pipelines ----------------------------------------------------------------------------

    def enqueue_pipeline(
        self,
        loaded: LoadedPipeline,
        caller: Caller,
        shipments: Mapping[str, Shipment | None] | None = None,
    ) -> tuple[Pipeline, list[Run]]:
        """Queue a pipeline: every step and its runs, or nothing (engine/pipelines.py)."""
        return pipelines.enqueue_pipeline(self._parts, self._state, loaded, caller, shipments)

    def prepare_pipeline(
        self, loaded: LoadedPipeline, caller: Caller
    ) -> tuple[Pipeline, list[PipelineStep], dict[str, StepRuns]]:
        """A pipeline's rows, checked as `enqueue_pipeline` checks them, not yet stored: a
        schedule's firing stores them with its firing record."""
        return pipelines.build_pipeline(self._parts, self._state, loaded, caller)

    def pipeline_runs(self, pipeline_id: int) -> list[Run]:
        """The runs of a pipeline's steps as they stand (a rerun step's newest)."""
        return pipelines.current_runs(self._parts, pipeline_id)

    def pipeline_step_states(self, pipeline_id: int) -> dict[str, RunState]:
        """Each step's state, by the pipeline's rules (hpcops/pipeline/progress.py)."""
        steps = self._parts.store.pipeline_steps([pipeline_id])[pipeline_id]
        return pipelines.step_states(self._parts, steps)

    def cancel_pipeline_steps(self, pipeline_id: int, caller: Caller) -> list[str]:
        """End a pipeline's register steps that have not run (its runs are cancelled one by
        one, with `cancel`)."""
        return pipelines.cancel_register_steps(self._parts, pipeline_id, caller)

    def rerun_step(
        self, pipeline_id: int, step: str, downstream: bool, caller: Caller
    ) -> list[Run]:
        """Run a pipeline's step again, and with `downstream` every step after it."""
        return pipelines.rerun_steps(
            self._parts, self._state, pipeline_id, step, downstream, caller
        )

    # --- requests about runs ------------------------------------------------------------------

    def cancel(self, run_id: int, caller: Caller) -> tuple[Run, str]:
        return requests.cancel(self._parts, self._state, run_id, caller)

    def set_priority(self, run_id: int, priority: int, caller: Caller, note: str = "") -> Run:
        return requests.set_priority(self._parts, self._state, run_id, priority, caller, note)

    def top(self, run_id: int, caller: Caller) -> Run:
        return requests.top(self._parts, self._state, run_id, caller)

    def hold(self, run_id: int, caller: Caller) -> Run:
        return requests.hold(self._parts, self._state, run_id, caller)

    def release_hold(self, run_id: int, caller: Caller) -> Run:
        return requests.release_hold(self._parts, self._state, run_id, caller)

    def retry(self, run_id: int, caller: Caller) -> Run:
        """Queue an ended run's next attempt by hand (not a COMPLETED one: that is rerun). The
        API checks who may ask; the engine, the run's state."""
        return requests.retry(self._parts, self._state, run_id, caller)

    def rerun(
        self,
        source: int | str,
        overrides: dict[str, str],
        caller: Caller,
        check: Callable[[Spec], None] | None = None,
    ) -> Run:
        """Queue a run again from its record (an hpcops or MLflow run id)."""
        return requests.rerun(self._parts, self._state, source, overrides, caller, check)

    def rerun_sweep(self, sweep_id: int, caller: Caller) -> tuple[Sweep, list[Run]]:
        """Queue a sweep again: the same spec, code, data and points."""
        return requests.rerun_sweep(self._parts, self._state, sweep_id, caller)

    def why(self, run: Run) -> str:
        """One line: why the run is where it is."""
        return requests.why(self._parts, self._state, run)

    # --- the lab's queue, for `hpcops quota` -------------------------------------------------

    def quotas(self) -> policy.Quotas:
        """The config's quotas with the leads' run-time overrides on top."""
        return release.quotas(self._parts)

    def active_jobs(self) -> list[policy.Active]:
        """The lab's jobs in Slurm, hpcops' own and those submitted by hand."""
        return release.active_jobs(self._parts, self._state)
