"""A spec file as the daemon takes it from the CLI, without the Spec model (pydantic) or a YAML
parser on the CLI's side.

What a relative path in a spec is relative to is the one thing only the machine that holds the
file knows; everything else the daemon checks itself. So the CLI's quick path (`submit` and
`validate`, through the fast entry or click) sends the file's text as it is with its folder
(`spec_file_item`), and the daemon anchors the paths (`anchor_paths`, which `hpcops.spec.load`
applies to a file it reads too) before it validates.
"""

from __future__ import annotations

import os
import re
import stat

from hpcops.describe import CONTROL_RE

# The fast entry's submit imports this module: only os and re at run time (see hpcops/home.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Final

_URL_SCHEMES: Final = ("https://", "http://", "ssh://", "git://", "file://")
_SCP_LIKE_RE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")
# yamlio.MAX_YAML_BYTES, spelled here so that the CLI need not import the YAML parser (a unit
# test keeps the two equal): a bigger file goes the full path, which says so.
MAX_SPEC_BYTES: Final = 1024 * 1024
# Top-level keys that only the CLI's full path handles: code to pin and ship, a schedule: block
# it mentions, a pipeline's steps: (hpcops.pipeline reads such a file as a pipeline). A spec that
# spells them otherwise (JSON, quotes) is refused by the daemon's submit for the same reason.
_FULL_PATH_KEYS: Final = frozenset({b"code", b"schedule", b"steps"})


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


def folder_of(path: str) -> str:
    """The absolute folder of the file `path` names, as `Path(path).absolute().parent` spells
    it, without pathlib: empty and `.` parts dropped, `..` kept (where it leads is the links'
    business, as it is when the file is opened)."""
    full = path if path.startswith("/") else f"{os.getcwd()}/{path}"
    parts = [part for part in full.split("/") if part and part != "."]
    return "/" + "/".join(parts[:-1])


def spec_file_item(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The spec file as the daemon takes it from here: its text as it is, and its folder, for
    the daemon to anchor relative paths against (as `load_spec_file` does). None when the CLI's
    full path must read it: unreadable, too big, not UTF-8, a key only that path handles, or
    not a regular file (a pipe, `<(envsubst < t.yaml)`, is left unread for that path to read)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return None
            data = file.read(MAX_SPEC_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_SPEC_BYTES:
        return None
    for line in data.splitlines():
        top_level = line[:1] not in (b" ", b"\t", b"#", b"-")
        if top_level and line.partition(b":")[0].strip() in _FULL_PATH_KEYS:
            return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return {"yaml": text, "source": name, "base_dir": folder_of(name)}
