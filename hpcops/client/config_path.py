"""Where the client config lives, apart from reading it (config.py): a call on the login node
with no client config at all then knows that it talks to the local socket without importing
the config reader or the YAML parser (issue 16: every import is paid by every CLI call)."""

from __future__ import annotations

import os
from pathlib import Path


def client_config_path() -> Path:
    env = os.environ.get("HPCOPS_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hpcops" / "config.yaml"
