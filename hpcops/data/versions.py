"""A data version, read from git alone: DVC's .dvc file at a commit names the content's md5."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from hpcops.code.git import DAEMON_GIT_ENV, GitError, git_head
from hpcops.errors import HpcopsError
from hpcops.yamlio import Document, YamlProblems, read_yaml

# DVC's content hash of a version: 32 hex digits, ".dir" for a directory's manifest. Every md5
# that becomes a path in the cache is checked against this first.
MD5_RE = re.compile(r"[0-9a-f]{32}(?:\.dir)?")
FILE_MD5_RE = re.compile(r"[0-9a-f]{32}")
MAX_DVC_FILE_BYTES = 64 * 1024
# A .dvc file comes from a member's repository: it is read like a spec, by hpcops' one YAML reader
# (no anchors, aliases or tags, bounded size and depth), never by yaml.safe_load.
DVC_FILE = Document(
    ".dvc file", "a .dvc file needs three at most", "A .dvc file names one output and its md5"
)


class DataVersionError(HpcopsError):
    """The target is not a DVC-tracked file or directory at that commit; the message says why."""


@dataclass(frozen=True)
class DataVersion:
    """One staged target of one run: where it comes from, its version, and where the job sees it."""

    path: str  # in the repository
    repo: str  # the repository as the spec named it (the run's code repo, or a URL)
    rev: str  # the commit the .dvc file was read at
    md5: str  # DVC's hash: "<md5>.dir" for a directory
    size: int | None
    nfiles: int | None
    dest: str  # absolute: where the job finds it
    env: str  # HPCOPS_DATA_<NAME>

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")

    @property
    def content_md5(self) -> str:
        return self.md5.removesuffix(".dir")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataVersion:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def parse_dvc_file(text: str, where: str) -> tuple[str, int | None, int | None]:
    """(md5, size, nfiles) of the one output a `dvc add` file describes."""
    try:
        data = read_yaml(text, DVC_FILE)
    except YamlProblems as exc:
        shown = "; ".join(
            f"{p.location}: {p.message}" if p.location else p.message for p in exc.problems[:3]
        )
        raise DataVersionError(f"{where} is not a .dvc file hpcops reads: {shown}") from None
    outs = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict):
        raise DataVersionError(f"{where} does not describe exactly one DVC output (outs:)")
    out = outs[0]
    md5 = out.get("md5")
    if isinstance(md5, int) and not isinstance(md5, bool) and 0 <= md5 < 10**32:
        md5 = f"{md5:032d}"  # DVC writes md5s unquoted: one of decimal digits reads as a number
    if not isinstance(md5, str) or not MD5_RE.fullmatch(md5):
        raise DataVersionError(f"{where} has no md5 for its output (was it `dvc add`ed?)")
    if out.get("hash") != "md5":
        # DVC 2.x's output (no `hash: md5`): its objects live at the cache's root (ab/cdef), not
        # in files/md5 where the lab's cache is, so its staging could only fail, and misleadingly.
        raise DataVersionError(
            f"{where} was written by DVC 2.x (its output has no `hash: md5`); hpcops stages "
            "DVC 3 data only: run `dvc cache migrate --dvc-files` (DVC >= 3.26), then "
            "`dvc push` and commit the .dvc file"
        )
    size, nfiles = out.get("size"), out.get("nfiles")
    return (
        md5,
        size if isinstance(size, int) else None,
        nfiles if isinstance(nfiles, int) else (None if md5.endswith(".dir") else 1),
    )


def read_version(git_dir: str, commit: str, path: str) -> tuple[str, int | None, int | None]:
    """The version of `path` at `commit`, from the .dvc file in the lab's code mirror (the
    daemon's git directory of it: CodeMirror.git_dir)."""
    dvc_file = f"{path}.dvc"
    try:
        # One bounded read: a size asked first could be a swapped object's.
        data = git_head(
            [f"--git-dir={git_dir}", "cat-file", "blob", f"{commit}:{dvc_file}"],
            MAX_DVC_FILE_BYTES + 1,
            env=DAEMON_GIT_ENV,
        )
    except GitError:
        raise DataVersionError(
            f"{dvc_file} is not in the repository at {commit[:12]}: is {path} tracked by DVC "
            "(`dvc add`), and the .dvc file committed?"
        ) from None
    if len(data) > MAX_DVC_FILE_BYTES:
        raise DataVersionError(
            f"{dvc_file} at {commit[:12]} is over {MAX_DVC_FILE_BYTES} bytes; not a .dvc file"
        )
    text = data.decode("utf-8", errors="replace")
    return parse_dvc_file(text, f"{dvc_file} at {commit[:12]}")
