"""paramiko without invoke, unless the user's SSH config has a `Match exec` line (each case in a
fresh interpreter: the test must not change this one's modules)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
from pathlib import Path
from hpcops.transport.lean_paramiko import skip_invoke_unless_needed
skip_invoke_unless_needed(Path(sys.argv[1]))
import paramiko
config = paramiko.SSHConfig.from_path(sys.argv[1])
loaded = sys.modules.get("invoke") is not None
print(config.lookup("login")["hostname"], loaded)
"""


@pytest.mark.parametrize(
    ("text", "invoke_loaded"),
    [
        ("Host login\n    HostName cluster.example.edu\n", False),
        (
            'Match exec "test -f /tmp/on-vpn"\n    User ana\n'
            "Host login\n    HostName cluster.example.edu\n",
            True,
        ),
    ],
)
def test_invoke_is_skipped_only_when_no_match_exec_needs_it(
    tmp_path: Path, text: str, invoke_loaded: bool
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(text)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["cluster.example.edu", str(invoke_loaded)]
