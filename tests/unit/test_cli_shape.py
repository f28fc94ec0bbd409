"""The CLI's shape: `hpcops --help`, and submit, validate and ls against a local daemon, load no
heavy module; its copy of the run states is the store's."""

from __future__ import annotations

import ast
import json
import os
import socketserver
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hpcops.api import protocol
from hpcops.cli.context import ACTIVE, STATE_NAMES
from hpcops.states import TERMINAL_STATES, RunState

HEAVY = ("pydantic", "jinja2", "sqlalchemy", "paramiko", "yaml", "mlflow", "dvc", "hpcops.states")

PROBE = f"""
import sys
sys.argv = ["hpcops", "--help"]
from hpcops.cli.main import main
try:
    main()
except SystemExit:
    pass
print([m for m in {HEAVY!r} if m in sys.modules])
"""


def test_help_imports_no_heavy_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-1] == "[]"


def test_the_cli_names_the_run_states_in_their_order() -> None:
    assert [*STATE_NAMES] == [state.value for state in RunState]
    assert [*ACTIVE] == [state.value for state in RunState if state not in TERMINAL_STATES]


# What a daemon answers, for the calls below: enough for the CLI to print its answer.
_ANSWERS = {
    "submit": {"runs": [{"id": 1, "name": "quick", "state": "QUEUED"}]},
    "validate": {"valid": True, "name": "quick", "sweep": None},
    "list": [],
}


def _fake_socket(path: Path, calls: list[dict[str, Any]]) -> socketserver.UnixStreamServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                message = json.loads(line)
                calls.append(message)
                answer = protocol.ok(message["id"], _ANSWERS[message["method"]])
                self.wfile.write(protocol.encode(answer))

    server = socketserver.UnixStreamServer(str(path), Handler)
    # A short poll: shutdown() waits for it (the default 0.5 s, per test).
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return server


@pytest.mark.parametrize("command", ["submit", "validate", "ls"])
def test_the_login_nodes_everyday_calls_import_no_heavy_module(
    tmp_path: Path, command: str
) -> None:
    # Issue 16: 1,000 submits from 4 users paid 0.3 s of imports each. The daemon validates a
    # spec anyway, so the client sends the file's text; with no client config, no model of it.
    home = tmp_path / "home"
    home.mkdir()
    spec = tmp_path / "quick.yaml"
    spec.write_text("name: quick\nexperiment: e\ncommand: python train.py\nworkdir: sub\n")
    calls: list[dict[str, Any]] = []
    server = _fake_socket(home / "hpcops.sock", calls)
    argv = ["hpcops", "--home", str(home), command, *([str(spec)] if command != "ls" else [])]
    probe = PROBE.replace('["hpcops", "--help"]', repr(argv))
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "no-config")}
    env.pop("HPCOPS_CONFIG", None)
    env.pop("HPCOPS_REMOTE", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
        )
    finally:
        server.shutdown()
        server.server_close()
    heavy = [m for m in ast.literal_eval(proc.stdout.splitlines()[-1]) if m != "yaml"]
    assert heavy == [], proc.stderr
    if command != "ls":
        [message] = calls
        item = message["params"]["specs"][0] if command == "submit" else message["params"]
        assert item["source"] == str(spec)
        # The one thing only this machine knows: what the workdir is relative to.
        assert item["yaml"].endswith("workdir: sub\n") and item["base_dir"] == str(tmp_path)
