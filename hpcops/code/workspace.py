"""The submitter's side: pin a spec's code to a commit and bundle what the lab's mirror lacks.

Nothing here writes into the user's repository. A dirty working tree is snapshotted with a
temporary index and a temporary object directory (the repository's own objects as alternates), and
bundles are cut from a throw-away bare repository that borrows those objects the same way.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hpcops.code.git import GitError, git
from hpcops.code.mirror import SHIP_REF
from hpcops.errors import FieldProblem, SpecError
from hpcops.names import FULL_COMMIT_RE as FULL_SHA_RE

MAX_DIRTY_FILES_SHOWN = 10
# How many commits of the first-parent history to offer the mirror as "have": the newest
# ones one by one, then ever sparser, so a branch far ahead of the mirror still finds a base.
RECENT_CANDIDATES = 32
SPARSE_CANDIDATES = 16

_SNAPSHOT_IDENTITY = {
    "GIT_AUTHOR_NAME": "hpcops",
    "GIT_AUTHOR_EMAIL": "hpcops@localhost",
    "GIT_COMMITTER_NAME": "hpcops",
    "GIT_COMMITTER_EMAIL": "hpcops@localhost",
}


@dataclass(frozen=True)
class PinnedCode:
    """A spec's code, resolved: `commit` is what the user committed; `checkout` is what the job
    checks out (the same commit, or a snapshot commit on top of it when the tree was dirty)."""

    repo: Path
    commit: str
    checkout: str
    dirty: bool
    objects_dir: Path  # the repository's object directory (worktrees share their main one)
    snapshot_objects: Path | None  # where the dirty snapshot's objects were written


def pin(repo: Path, rev: str, *, allow_dirty: bool, scratch: Path, source: str) -> PinnedCode:
    """Resolve `rev` in `repo` to a full commit; refuse a dirty tree unless `allow_dirty`.

    `scratch` is a private temporary directory for a dirty snapshot's objects. Errors name the
    spec field (`code.repo`, `code.commit`) and say what to do.
    """
    try:
        top = git(["rev-parse", "--show-toplevel"], cwd=repo).strip()
    except (GitError, OSError) as exc:
        raise _problem(
            source, "code.repo", f"{str(repo)!r} is not a git repository: {exc}"
        ) from None
    try:
        commit = git(["rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}"], cwd=repo)
    except GitError as exc:
        raise _problem(source, "code.commit", f"{rev!r} is not a commit in {top}: {exc}") from None
    commit = commit.strip()
    objects_dir = Path(
        git(["rev-parse", "--path-format=absolute", "--git-path", "objects"], cwd=repo).strip()
    )
    if rev != "HEAD":
        # A named commit is what it is, whatever the working tree holds.
        return PinnedCode(Path(top), commit, commit, False, objects_dir, None)
    changed = _dirty_paths(Path(top))
    if not changed:
        return PinnedCode(Path(top), commit, commit, False, objects_dir, None)
    if not allow_dirty:
        shown = ", ".join(changed[:MAX_DIRTY_FILES_SHOWN])
        more = len(changed) - MAX_DIRTY_FILES_SHOWN
        listing = shown + (f" and {more} more" if more > 0 else "")
        raise _problem(
            source,
            "code",
            f"{top} has uncommitted changes ({listing}); commit or stash them so the run can "
            "be reproduced, or pass --allow-dirty to ship them as a snapshot (the run is "
            "marked dirty)",
        )
    snapshot_objects = scratch / "objects"
    snapshot_objects.mkdir(parents=True, exist_ok=True)
    checkout = _snapshot(Path(top), commit, objects_dir, snapshot_objects, scratch / "index")
    return PinnedCode(Path(top), commit, checkout, True, objects_dir, snapshot_objects)


def first_parent_history(pinned: PinnedCode) -> list[str]:
    """The commit and its first-parent ancestors, newest first (at most 2**16 of them)."""
    return git(
        ["rev-list", "--first-parent", f"--max-count={2**SPARSE_CANDIDATES}", pinned.commit],
        cwd=pinned.repo,
    ).split()


def probe_indices(length: int, recent: int = RECENT_CANDIDATES) -> list[int]:
    """Positions in a history to ask the mirror about first: the newest ones one by one, then
    at doubling distances, then the oldest."""
    picks = list(range(min(recent, length)))
    step = recent
    while step < length:
        picks.append(step)
        step *= 2
    if length and picks[-1] != length - 1:
        picks.append(length - 1)
    return picks


def refine_indices(history: list[str], have: set[str], limit: int = 256) -> list[int]:
    """Positions to ask about next: the mirror holds every ancestor of a commit it holds, so
    along the history "held" starts at one position; look between the newest held and the
    oldest missing one asked so far. Empty when that gap is already closed."""
    held = [i for i, sha in enumerate(history) if sha in have]
    if not held:
        return []
    newest_held = held[0]
    asked = set(probe_indices(len(history)))
    missing = [i for i in asked if i < newest_held and history[i] not in have]
    oldest_missing = max(missing, default=-1)
    gap = range(oldest_missing + 1, newest_held)
    if len(gap) <= limit:
        return list(gap)
    stride = len(gap) / limit
    return sorted({gap.start + int(k * stride) for k in range(limit)})


def write_bundle(pinned: PinnedCode, have: set[str], out: Path, scratch: Path) -> Path | None:
    """A bundle at `out` holding the checkout commit and what it needs beyond `have`; None when
    the mirror already has the checkout commit."""
    if pinned.checkout in have:
        return None
    shipper = scratch / "ship.git"
    git(["init", "--quiet", "--bare", str(shipper)])
    alternates = [str(pinned.objects_dir)]
    if pinned.snapshot_objects is not None:
        alternates.append(str(pinned.snapshot_objects))
    (shipper / "objects" / "info" / "alternates").write_text("\n".join(alternates) + "\n")
    env = {"GIT_DIR": str(shipper)}
    git(["update-ref", SHIP_REF, pinned.checkout], env=env)
    # Only prerequisites this repository knows can be named; the caller's `have` comes from
    # have_candidates, so all of them are ancestors of the commit or unrelated-but-present.
    exclude = [f"^{sha}" for sha in sorted(have)]
    git(["bundle", "create", "--quiet", str(out), SHIP_REF, *exclude], env=env)
    return out


def _dirty_paths(top: Path) -> list[str]:
    """Tracked changes and untracked files that are not ignored: everything a run would miss."""
    out = git(
        ["--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=all"], cwd=top
    )
    paths = []
    for entry in out.split("\0"):
        if len(entry) > 3:
            paths.append(entry[3:])
    return paths


def _snapshot(top: Path, base: str, objects_dir: Path, into: Path, index: Path) -> str:
    """A commit of the working tree exactly as it is, on top of `base`, written to `into`."""
    env = {
        "GIT_INDEX_FILE": str(index),
        "GIT_OBJECT_DIRECTORY": str(into),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects_dir),
        **_SNAPSHOT_IDENTITY,
    }
    git(["read-tree", base], cwd=top, env=env)
    git(["add", "--all", "--", "."], cwd=top, env=env)
    tree = git(["write-tree"], cwd=top, env=env).strip()
    message = f"hpcops: uncommitted changes on top of {base}\n"
    commit = git(["commit-tree", tree, "-p", base], cwd=top, env=env, stdin=message).strip()
    if not FULL_SHA_RE.fullmatch(commit):
        raise GitError(f"git commit-tree printed {commit!r}, not a commit id")
    return commit


def _problem(source: str, location: str, message: str) -> SpecError:
    return SpecError(source, [FieldProblem(location, message)])


def private_scratch() -> tempfile.TemporaryDirectory[str]:
    """A 0700 temporary directory for snapshots and bundles, removed by the caller."""
    old = os.umask(0o077)
    try:
        return tempfile.TemporaryDirectory(prefix="hpcops-code-")
    finally:
        os.umask(old)
