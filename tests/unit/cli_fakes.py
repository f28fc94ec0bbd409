"""The CLI tests' one fake daemon (test_cli_retry.py, test_cli_sweeps.py, test_cli_pipelines.py),
rather than a copy in each: the CLI's requests are recorded, and answered as each test says."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hpcops.cli.context import Context
from hpcops.cli.main import cli
from hpcops.errors import HpcopsError

Default = Callable[[str, dict[str, Any]], Any]


# A run as `ls` lists it (the keys the CLI prints), for a daemon's answer.
RUN_ROW: dict[str, Any] = {
    "type": "run",
    "id": 30,
    "name": "single",
    "owner": "bob",
    "priority": 0,
    "state": "QUEUED",
    "slurm_job_id": None,
    "created_at": "2026-01-02T03:04:05Z",
    "elapsed_s": None,
    "exit_code": None,
    "signal": None,
    "wait_reason": "lab GPU quota full",
}


class FakeDaemon:
    """Each method's answer is in `answers`: a value, a function of the params, or an
    HpcopsError to raise. A method without one gets `default(method, params)`; with no default,
    it fails the test."""

    def __init__(self, default: Default | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers: dict[str, Any] = {}
        self.default = default

    def call(self, method: str, **params: Any) -> Any:
        self.calls.append((method, params))
        if method in self.answers or self.default is None:
            answer = self.answers[method]
        else:
            answer = self.default(method, params)
        if isinstance(answer, HpcopsError):
            raise answer
        return answer(params) if callable(answer) else answer


def fake_daemon(monkeypatch: pytest.MonkeyPatch, default: Default | None = None) -> FakeDaemon:
    """A FakeDaemon that answers every request the CLI makes in this test."""
    fake = FakeDaemon(default)

    def call(self: Context, method: str, **params: Any) -> Any:
        return fake.call(method, **params)

    monkeypatch.setattr(Context, "call", call)
    return fake


def answered_ok(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A default answer: a message saying which request it was, and the run it named."""
    return {"message": f"{method} ok", "id": params.get("run")}


def run_cli(*argv: str) -> Result:
    return CliRunner().invoke(cli, list(argv))
