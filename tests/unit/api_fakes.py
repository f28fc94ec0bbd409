"""The API tests' one fake engine and the Api over it (test_api_dispatch.py, test_api_retry.py,
test_api_sweeps.py, test_api_pipelines.py), rather than a copy in each: a second copy drifts from
the Engine protocol.

FakeEngine is the engine as the API sees it (hpcops.api.handlers.base.Engine) on a real store:
the reads answer plainly (a pipeline's by the engine's own rules, hpcops/engine/pipelines.py, which
read only the store), and every action fails the test until a test's subclass does it.
StoreEngine does the per-run requests on the store as the engine does them."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hpcops import policy
from hpcops.access import Caller
from hpcops.api import protocol
from hpcops.api.handlers.base import Engine
from hpcops.api.server import Api
from hpcops.code.mirror import CodeMirror, Shipment
from hpcops.config import Config
from hpcops.config_sections import AccessConfig
from hpcops.data.cache import ContentCache
from hpcops.engine import EngineStatus, SlurmHealth, pipelines
from hpcops.engine.state import Parts
from hpcops.errors import InvalidInput
from hpcops.pipeline import Pipeline as LoadedPipeline
from hpcops.spec import Spec
from hpcops.states import RunState
from hpcops.store import Pipeline, Run, Store, Sweep
from hpcops.transport.local import LocalTransport

DAEMON = Caller(uid=4242, name="svc")
REQUEST_ID = 7  # every request's id, which the answer carries back


class FakeEngine:
    """Records the specs it checked; an action a test's subclass does not do fails the test."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.checked: list[str] = []

    def status(self) -> EngineStatus:
        return EngineStatus(health=SlurmHealth(), last_poll_at=None, decision=None, usage={})

    def check_spec(self, spec: Spec, source: str) -> None:
        self.checked.append(source)

    def enqueue(
        self,
        specs: Sequence[tuple[Spec, str]],
        caller: Caller,
        shipments: Sequence[Shipment | None] | None = None,
    ) -> list[Run]:
        raise AssertionError("not used here")

    def cancel(self, run_id: int, caller: Caller) -> tuple[Run, str]:
        raise AssertionError("not used here")

    def set_priority(self, run_id: int, priority: int, caller: Caller, note: str = "") -> Run:
        raise AssertionError("not used here")

    def top(self, run_id: int, caller: Caller) -> Run:
        raise AssertionError("not used here")

    def hold(self, run_id: int, caller: Caller) -> Run:
        raise AssertionError("not used here")

    def release_hold(self, run_id: int, caller: Caller) -> Run:
        raise AssertionError("not used here")

    def retry(self, run_id: int, caller: Caller) -> Run:
        raise AssertionError("not used here")

    def rerun(
        self,
        source: int | str,
        overrides: dict[str, str],
        caller: Caller,
        check: Callable[[Spec], None] | None = None,
    ) -> Run:
        raise AssertionError("not used here")

    def rerun_sweep(self, sweep_id: int, caller: Caller) -> tuple[Sweep, list[Run]]:
        raise AssertionError("not used here")

    def enqueue_pipeline(
        self,
        loaded: LoadedPipeline,
        caller: Caller,
        shipments: Mapping[str, Shipment | None] | None = None,
    ) -> tuple[Pipeline, list[Run]]:
        raise AssertionError("not used here")

    def pipeline_runs(self, pipeline_id: int) -> list[Run]:
        return pipelines.current_runs(_store_parts(self.store), pipeline_id)

    def pipeline_step_states(self, pipeline_id: int) -> dict[str, RunState]:
        steps = self.store.pipeline_steps([pipeline_id])[pipeline_id]
        return pipelines.step_states(_store_parts(self.store), steps)

    def cancel_pipeline_steps(self, pipeline_id: int, caller: Caller) -> list[str]:
        raise AssertionError("not used here")

    def rerun_step(
        self, pipeline_id: int, step: str, downstream: bool, caller: Caller
    ) -> list[Run]:
        raise AssertionError("not used here")

    def why(self, run: Run) -> str:
        return "waiting for the test"

    def changed(self) -> None:
        return None

    def batch(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def quotas(self) -> policy.Quotas:
        return policy.Quotas()

    def active_jobs(self) -> list[policy.Active]:
        return []


_: type[Engine] = FakeEngine  # mypy: the fake keeps to the protocol


def queued_run(name: str, caller: Caller, priority: int, index: int | None = None) -> Run:
    """A QUEUED run as intake makes one (a sweep's point with its `index`), not yet stored."""
    now = time.time()
    return Run(
        name=name,
        experiment="e",
        owner=caller.name,
        owner_uid=caller.uid,
        priority=priority,
        state=RunState.QUEUED.value,
        spec_yaml=name,
        spec_hash=hashlib.sha256(name.encode()).hexdigest()[:16],
        created_at=now,
        updated_at=now,
        sweep_index=index,
    )


@dataclass(frozen=True)
class _StoreParts:
    """What the engine's pipeline reads need of its Parts: the store, and nothing else."""

    store: Store


def _store_parts(store: Store) -> Parts:
    return cast(Parts, _StoreParts(store))


class StoreEngine(FakeEngine):
    """The engine's per-run requests done on the store as the engine does them."""

    def cancel(self, run_id: int, caller: Caller) -> tuple[Run, str]:
        run = self.store.get(run_id)
        if run.state in ("QUEUED", "HELD"):
            done = self.store.transition(run_id, RunState.CANCELLED, actor=caller.name)
            assert done is not None
            return done, f"run {run_id} cancelled"
        updated = self.store.transition(
            run_id, None, actor=caller.name, cancel_requested_by=caller.name
        )
        assert updated is not None
        return updated, f"run {run_id}: scancel requested"

    def set_priority(self, run_id: int, priority: int, caller: Caller, note: str = "") -> Run:
        updated = self.store.transition(run_id, None, actor=caller.name, priority=priority)
        assert updated is not None
        return updated

    def top(self, run_id: int, caller: Caller) -> Run:
        highest = self.store.max_queued_priority() or 0
        return self.set_priority(run_id, highest + 1, caller)

    def hold(self, run_id: int, caller: Caller) -> Run:
        updated = self.store.transition(
            run_id, RunState.HELD, actor=caller.name, expect=(RunState.QUEUED,), held_by=caller.name
        )
        if updated is None:
            raise InvalidInput(f"run {run_id} left the queue meanwhile")
        return updated

    def release_hold(self, run_id: int, caller: Caller) -> Run:
        updated = self.store.transition(
            run_id, RunState.QUEUED, actor=caller.name, expect=(RunState.HELD,), held_by=None
        )
        assert updated is not None
        return updated

    def cancel_pipeline_steps(self, pipeline_id: int, caller: Caller) -> list[str]:
        return pipelines.cancel_register_steps(_store_parts(self.store), pipeline_id, caller)


def make_api(
    tmp_path: Path,
    engine: FakeEngine,
    store: Store,
    *,
    members: Sequence[str] = ("ana", "bob"),
    leads: Sequence[str] = ("leo",),
) -> Api:
    """The Api over the fake engine and a store, in tmp_path, without tracking."""
    config = Config(access=AccessConfig(members=list(members), leads=list(leads)))
    return Api(
        engine,
        store,
        config=config,
        home=tmp_path,
        files=LocalTransport(),
        code_mirror=CodeMirror(tmp_path / "code", state=tmp_path / "code-mirror"),
        data_cache=ContentCache(tmp_path / "cache"),
        tracker=None,
        started_at=time.time(),
        daemon_uid=DAEMON.uid,
    )


def call(server: Api, caller: Caller, method: str, **params: Any) -> dict[str, Any]:
    """The answer to one request, in the wire format."""
    return server.handle(caller, protocol.request(REQUEST_ID, method, params))


def ok(server: Api, caller: Caller, method: str, **params: Any) -> Any:
    answer = call(server, caller, method, **params)
    assert answer["ok"], answer
    return answer["result"]


def error(server: Api, caller: Caller, method: str, **params: Any) -> dict[str, str]:
    answer = call(server, caller, method, **params)
    assert not answer["ok"], answer
    failure: dict[str, str] = answer["error"]
    return failure
