"""The CLI's shape: `hpcops --help` loads no heavy module, and its copy of the run states is
the store's."""

from __future__ import annotations

import subprocess
import sys

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
