"""A spec file as plain data, anchored to its folder, without the Spec model (pydantic).

What a relative path in a spec is relative to is the one thing only the machine that holds the
file knows; everything else the daemon checks itself. So the CLI's quick path sends the file's
plain data with its paths anchored (`quick_spec_text`) and lets the daemon validate it, and
`hpcops.spec.load` anchors by the same rule (`anchor_paths`) before it validates.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from hpcops.describe import CONTROL_RE
from hpcops.yamlio import SPEC, YamlProblems, dump_yaml, read_bounded, read_yaml

_URL_SCHEMES: Final = ("https://", "http://", "ssh://", "git://", "file://")
_SCP_LIKE_RE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")
# Top-level keys that only the CLI's full path handles: code to pin and ship, a schedule: block
# it mentions, a pipeline's steps: (hpcops.pipeline reads such a file as a pipeline).
_FULL_PATH_KEYS: Final = frozenset({"code", "schedule", "steps"})


def is_repo_url(value: str) -> bool:
    """A repository the cluster fetches itself (URL or user@host:path), not a local path."""
    return value.startswith(_URL_SCHEMES) or bool(_SCP_LIKE_RE.match(value))


def is_relative_text(value: object) -> bool:
    """A relative path that validation would otherwise accept (left alone if it is bad)."""
    return (
        isinstance(value, str)
        and bool(value)
        and not value.startswith(("/", "~", "-"))
        and not is_repo_url(value)
        and "://" not in value
        and not CONTROL_RE.search(value)
    )


def anchor_paths(plain: dict[str, object], base_dir: Path) -> None:
    """In place: a spec file's relative paths made absolute against its folder. With code, the
    workdir is a folder of the checkout and only the repo is the file's; without, a relative
    workdir is the file's, and a spec without one runs in the file's folder."""
    code = plain.get("code")
    if isinstance(code, dict):
        repo = code.get("repo")
        if is_relative_text(repo):
            code["repo"] = os.path.normpath(base_dir / str(repo))
        return
    workdir = plain.get("workdir")
    if workdir is None:
        plain["workdir"] = str(base_dir)
    elif is_relative_text(workdir):
        plain["workdir"] = str(base_dir / str(workdir))


def quick_spec_text(path: Path) -> str | None:
    """The spec file's text for the daemon to validate, its paths anchored; None when the CLI's
    full path must read it (code to pin and ship, a schedule: block to mention, a pipeline's
    steps:, or anything unreadable: the full path says what is wrong in its usual words)."""
    try:
        plain = read_yaml(read_bounded(path, SPEC), SPEC)
    except (OSError, YamlProblems):
        return None
    if not isinstance(plain, dict) or not _FULL_PATH_KEYS.isdisjoint(plain):
        return None
    anchor_paths(plain, Path(path).absolute().parent)
    return dump_yaml(plain)
