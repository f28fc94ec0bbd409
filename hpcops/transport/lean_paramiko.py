"""Import paramiko without what this user's SSH config cannot need.

paramiko's config module imports invoke (a task runner: a third of paramiko's import time) only
to run the `Match exec` lines of ~/.ssh/config. Every laptop call pays paramiko's import, so
when the user's SSH config has no such line, Python is told invoke is absent and paramiko skips
it; with such a line, nothing changes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_MATCH_EXEC = re.compile(r"^\s*match\b.*\bexec\b", re.IGNORECASE | re.MULTILINE)


def skip_invoke_unless_needed(ssh_config: Path = Path("~/.ssh/config")) -> None:
    if "invoke" in sys.modules or "paramiko" in sys.modules:
        return
    try:
        text = ssh_config.expanduser().read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    if not _MATCH_EXEC.search(text) and "Include" not in text:
        # An Include could hold a Match exec line: then invoke stays importable.
        sys.modules["invoke"] = None  # type: ignore[assignment]
