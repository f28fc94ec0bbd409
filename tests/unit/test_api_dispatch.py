"""The API's dispatch and handlers without Slurm: a fake engine (only the methods PLAN contract 2
names), a real store in a temporary directory, answers in the wire format."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from api_fakes import DAEMON, FakeEngine, call, make_api

from hpcops.access import Caller
from hpcops.api.server import Api
from hpcops.code.mirror import Shipment
from hpcops.spec import Spec
from hpcops.states import RunState
from hpcops.store import Run, Store

ANA = Caller(uid=5001, name="ana")  # a member
EVE = Caller(uid=5002, name="eve")  # not in the lab
SPEC = "name: train\nexperiment: e\ncommand: 'true'\npriority: 5\n"


class DispatchEngine(FakeEngine):
    """Records what it was asked and queues into the store; the other actions leave the run."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.enqueued: list[tuple[list[tuple[Spec, str]], list[Shipment | None] | None]] = []

    def enqueue(
        self,
        specs: Sequence[tuple[Spec, str]],
        caller: Caller,
        shipments: Sequence[Shipment | None] | None = None,
    ) -> list[Run]:
        self.enqueued.append((list(specs), None if shipments is None else list(shipments)))
        now = time.time()
        runs = [
            Run(
                name=spec.name,
                experiment=spec.experiment,
                owner=caller.name,
                owner_uid=caller.uid,
                priority=spec.priority,
                state=RunState.QUEUED.value,
                spec_yaml=spec.name,
                spec_hash=hashlib.sha256(spec.name.encode()).hexdigest()[:16],
                created_at=now,
                updated_at=now,
            )
            for spec, _source in specs
        ]
        return self.store.add_runs(runs, actor=caller.name)

    def cancel(self, run_id: int, caller: Caller) -> tuple[Run, str]:
        return self.store.get(run_id), f"run {run_id} cancelled"

    def set_priority(self, run_id: int, priority: int, caller: Caller, note: str = "") -> Run:
        return self.store.get(run_id)

    def top(self, run_id: int, caller: Caller) -> Run:
        return self.store.get(run_id)

    def hold(self, run_id: int, caller: Caller) -> Run:
        return self.store.get(run_id)

    def release_hold(self, run_id: int, caller: Caller) -> Run:
        return self.store.get(run_id)


@pytest.fixture
def api(tmp_path: Path) -> tuple[Api, DispatchEngine, Store]:
    store = Store(tmp_path / "hpcops.db")
    engine = DispatchEngine(store)
    return make_api(tmp_path, engine, store, members=["ana"], leads=[]), engine, store


def test_an_answer_and_a_refusal_keep_the_wire_format(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, _, _ = api
    assert call(server, DAEMON, "list") == {"v": 1, "id": 7, "ok": True, "result": []}
    assert call(server, DAEMON, "show", run="1; DROP TABLE run") == {
        "v": 1,
        "id": 7,
        "ok": False,
        "error": {
            "kind": "invalid_input",
            "message": "params.run must be a run id (a positive integer), a sweep id (s and "
            "a positive integer, e.g. s7) or a pipeline id (p and a positive integer, e.g. p3), "
            "not '1; DROP TABLE run'",
        },
    }
    unknown = call(server, DAEMON, "drop_everything")["error"]
    assert (
        unknown["kind"] == "protocol" and "unknown method 'drop_everything'" in unknown["message"]
    )
    bad = server.handle(DAEMON, {"v": 1, "id": 1, "method": "list", "params": [1]})
    assert bad["error"] == {"kind": "invalid_input", "message": "params must be a JSON object"}
    assert call(server, DAEMON, "show", run=99)["error"]["kind"] == "not_found"


def test_submit_parses_each_spec_once_and_hands_the_engine_specs(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, engine, store = api
    commit = "ab" * 20
    answer = call(
        server,
        ANA,
        "submit",
        specs=[
            {"yaml": SPEC, "source": "a.yaml"},
            {"yaml": SPEC, "source": "b.yaml", "code": {"checkout": commit, "dirty": True}},
        ],
    )
    assert answer["ok"], answer
    assert [r["state"] for r in answer["result"]["runs"]] == ["QUEUED", "QUEUED"]
    [(pairs, shipments)] = engine.enqueued
    assert [(type(spec), source) for spec, source in pairs] == [(Spec, "a.yaml"), (Spec, "b.yaml")]
    assert shipments == [None, Shipment(checkout=commit, dirty=True)]
    audit = store.audit_log()
    assert [(a.actor, a.action, a.allowed) for a in audit] == [("ana", "submit", True)] * 2


def test_every_invalid_spec_of_a_submit_is_named_at_once_and_nothing_is_queued(
    api: tuple[Api, DispatchEngine, Store], tmp_path: Path
) -> None:
    server, engine, store = api
    bad_gpus = SPEC + "resources: {gpus: -1}\n"
    answer = call(
        server,
        ANA,
        "submit",
        specs=[
            {"yaml": bad_gpus, "source": "a.yaml", "base_dir": str(tmp_path)},
            {"yaml": SPEC, "source": "b.yaml", "base_dir": str(tmp_path)},
            {"yaml": "name: [", "source": "c.yaml", "base_dir": str(tmp_path)},
        ],
    )
    error = answer["error"]
    assert error["kind"] == "invalid_input", error
    lines = error["message"].splitlines()
    assert lines[0] == "a.yaml: invalid spec" and "resources.gpus" in lines[1]
    assert any(line.startswith("c.yaml") for line in lines), lines
    assert not any(line.startswith("b.yaml") for line in lines), lines
    assert lines[-1] == "nothing was queued"
    assert engine.enqueued == [] and store.audit_log() == []


def test_a_spec_that_needs_the_full_path_is_said_so_before_any_other_problem(
    api: tuple[Api, DispatchEngine, Store], tmp_path: Path
) -> None:
    # The client's full path reads every spec itself and names each problem: the daemon says
    # only that the full path must run, whatever else it found.
    server, engine, _ = api
    answer = call(
        server,
        ANA,
        "submit",
        specs=[
            {"yaml": "name: [", "source": "c.yaml", "base_dir": str(tmp_path)},
            {"yaml": SPEC + '"code": {repo: .}\n', "source": "d.yaml", "base_dir": str(tmp_path)},
        ],
    )
    assert answer["error"]["kind"] == "needs_full_path", answer
    assert answer["error"]["message"].startswith("d.yaml: a spec with code: or schedule:")
    assert engine.enqueued == []


def test_a_member_priority_outside_their_range_queues_nothing(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, engine, _ = api
    answer = call(
        server, ANA, "submit", specs=[{"yaml": SPEC.replace("5", "500"), "source": "x.yaml"}]
    )
    assert answer["error"]["kind"] == "permission_denied"
    assert "outside the member range" in answer["error"]["message"]
    assert engine.enqueued == []


def test_validate_asks_the_engine_about_the_parsed_spec(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, engine, _ = api
    assert call(server, ANA, "validate", yaml=SPEC, source="v.yaml")["result"] == {
        "valid": True,
        "name": "train",
        "sweep": None,
    }
    assert engine.checked == ["v.yaml"]


def test_an_outsider_is_refused_and_the_refusal_audited(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, _, store = api
    answer = call(server, EVE, "quota_set", scope="lab", resource="gpus", value=99)
    assert answer["error"]["kind"] == "permission_denied"
    [entry] = store.audit_log()
    assert (entry.actor, entry.action, entry.target, entry.allowed) == (
        "eve",
        "quota_set",
        "quota 'lab'.'gpus'",
        False,
    )
    # outsiders may still ask whether the daemon is there, and see no runs
    ping = call(server, EVE, "ping")["result"]
    assert ping["role"] == "outsider" and ping["runs"] == {}


def test_requests_on_a_run_are_authorized_applied_and_audited(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, _, store = api
    [run] = call(server, ANA, "submit", specs=[{"yaml": SPEC, "source": "a.yaml"}])["result"][
        "runs"
    ]
    shown = call(server, ANA, "show", run=run["id"])["result"]
    assert shown["wait_reason"] == "waiting for the test" and shown["schedule_name"] is None
    cancelled = call(server, ANA, "cancel", run=run["id"])["result"]
    assert cancelled["message"] == f"run {run['id']} cancelled"
    top = call(server, ANA, "top", run=run["id"])
    assert top["error"]["kind"] == "permission_denied", "top is for leads"
    assert [(a.action, a.allowed) for a in store.audit_log()][:2] == [
        ("top", False),
        ("cancel", True),
    ]


def test_cache_gc_says_what_to_remove_and_a_dry_run_removes_nothing(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, _, store = api
    assert "say what to remove" in call(server, DAEMON, "cache_gc")["error"]["message"]
    result = call(server, DAEMON, "cache_gc", max_bytes=0, dry_run=True)["result"]
    assert result == {
        "removed": [],
        "kept": 0,
        "files_removed": 0,
        "bytes_freed": 0,
        "dry_run": True,
    }
    assert store.audit_log() == [], "a dry run changes nothing, so it is not audited"
    member = call(server, ANA, "cache_gc", max_bytes=0)
    assert member["error"]["kind"] == "permission_denied"


def test_every_method_but_ping_refuses_an_unknown_key(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, _, _ = api
    for method in sorted(set(server.methods) - {"ping"}):
        answer = call(server, DAEMON, method, bogus_key=1)
        assert not answer["ok"], method
        # schedule methods in a daemon without schedules say so first; the rest name the key
        message = answer["error"]["message"]
        assert "unknown key 'bogus_key'" in message or "without schedules" in message, method


def test_a_refused_request_with_megabytes_in_it_adds_a_bounded_audit_row(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, _, store = api
    huge = "x" * (4 * 1024 * 1024)
    for field in ("scope", "run", "schedule"):
        answer = call(server, EVE, "quota_set", **{field: huge, "resource": huge, "value": 1})
        assert "error" in answer
    rows = store.audit_log()
    assert rows, "the refusals are audited"
    for row in rows:
        for value in (row.actor, row.action, row.target, row.before, row.after, row.detail):
            assert value is None or len(value) < 4096


def test_show_never_publishes_a_live_submission_token(
    api: tuple[Api, DispatchEngine, Store],
) -> None:
    server, _, store = api
    [run] = call(server, ANA, "submit", specs=[{"yaml": SPEC, "source": "a.yaml"}])["result"][
        "runs"
    ]
    store.transition(
        run["id"], RunState.SUBMITTING, actor="daemon", expect=(RunState.QUEUED,), token="feedc0de"
    )
    for caller in (ANA, DAEMON):
        shown = call(server, caller, "show", run=run["id"])["result"]
        assert "token" not in shown
        assert "feedc0de" not in repr(shown)
