"""Where the client config lives, apart from reading it (config.py): a call on the login node
with no client config at all then knows that it talks to the local socket without importing
the config reader or the YAML parser (issue 16: every import is paid by every CLI call), nor
pathlib (see hpcops/home.py)."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


def client_config_text() -> str:
    """$HPCOPS_CONFIG, else $XDG_CONFIG_HOME/hpcops/config.yaml (~/.config by default)."""
    env = os.environ.get("HPCOPS_CONFIG")
    if env:
        return os.path.expanduser(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "hpcops", "config.yaml")


def client_config_path() -> Path:
    from pathlib import Path

    return Path(client_config_text())
