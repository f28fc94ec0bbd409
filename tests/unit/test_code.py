"""Pinning, snapshotting and shipping code with real git repositories (no daemon, no Slurm), and
the job script's checkout run by bash against a real mirror."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcops.api.protocol import LineClient
from hpcops.client.ship import prepare
from hpcops.code.git import git as run_git
from hpcops.code.mirror import CodeMirror, MirrorError
from hpcops.code.workspace import (
    first_parent_history,
    pin,
    probe_indices,
    refine_indices,
    write_bundle,
)
from hpcops.errors import SpecError
from hpcops.render import CodeCheckout, JobContext, render_script
from hpcops.spec import parse_spec

IDENTITY = {"GIT_AUTHOR_NAME": "Ana", "GIT_AUTHOR_EMAIL": "ana@lab"}
IDENTITY |= {"GIT_COMMITTER_NAME": "Ana", "GIT_COMMITTER_EMAIL": "ana@lab"}


def git(repo: Path, *args: str) -> str:
    return run_git(list(args), cwd=repo, env=IDENTITY).strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "--quiet")
    (path / "train.py").write_text("print('v1')\n")
    git(path, "add", ".")
    git(path, "commit", "--quiet", "-m", "v1")
    return path


@pytest.fixture
def mirror(tmp_path: Path) -> CodeMirror:
    m = CodeMirror(tmp_path / "code", state=tmp_path / "home" / "code-mirror")
    m.ensure()
    return m


def commit(repo: Path, text: str) -> str:
    (repo / "train.py").write_text(text)
    git(repo, "commit", "--quiet", "-am", text)
    return git(repo, "rev-parse", "HEAD")


def ship(repo: Path, mirror: CodeMirror, tmp_path: Path, rev: str = "HEAD") -> tuple[str, int]:
    """What `hpcops submit` does for one spec: pin, ask, bundle, receive. (commit, bytes)"""
    scratch = tmp_path / f"scratch-{os.urandom(4).hex()}"
    scratch.mkdir()
    pinned = pin(repo, rev, allow_dirty=False, scratch=scratch, source="spec.yaml")
    history = first_parent_history(pinned)
    have = mirror.have([history[i] for i in probe_indices(len(history))])
    have |= mirror.have([history[i] for i in refine_indices(history, have)])
    bundle = write_bundle(pinned, have, mirror.incoming / f"{scratch.name}.bundle", scratch)
    if bundle is None:
        return pinned.commit, 0
    size = bundle.stat().st_size
    received = mirror.receive_bundle(bundle.name, os.getuid())
    assert received.commit == pinned.checkout and not bundle.exists()
    return pinned.commit, size


def test_pin_resolves_names_to_full_commits(repo: Path, tmp_path: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    for rev in ("HEAD", "v1", head[:7]):
        pinned = pin(repo, rev, allow_dirty=False, scratch=tmp_path, source="s")
        assert (pinned.commit, pinned.checkout, pinned.dirty) == (head, head, False)
    with pytest.raises(SpecError, match=r"code\.commit.*'nope' is not a commit"):
        pin(repo, "nope", allow_dirty=False, scratch=tmp_path, source="s")
    with pytest.raises(SpecError, match=r"code\.repo.*not a git repository"):
        pin(tmp_path, "HEAD", allow_dirty=False, scratch=tmp_path, source="s")


def test_a_dirty_tree_is_refused_or_snapshotted_without_touching_the_repo(
    repo: Path, tmp_path: Path
) -> None:
    head = git(repo, "rev-parse", "HEAD")
    (repo / "train.py").write_text("print('edited')\n")
    (repo / "new.py").write_text("x = 1\n")
    with pytest.raises(SpecError, match=r"uncommitted changes \(train\.py, new\.py"):
        pin(repo, "HEAD", allow_dirty=False, scratch=tmp_path, source="s")
    status_before = git(repo, "status", "--porcelain")
    objects_before = sorted(p.name for p in (repo / ".git" / "objects").iterdir())
    pinned = pin(repo, "HEAD", allow_dirty=True, scratch=tmp_path / "snap", source="s")
    assert pinned.dirty and pinned.commit == head and pinned.checkout != head
    assert git(repo, "status", "--porcelain") == status_before
    assert sorted(p.name for p in (repo / ".git" / "objects").iterdir()) == objects_before
    # A named commit is what it is: the working tree does not make it dirty.
    assert not pin(repo, head, allow_dirty=False, scratch=tmp_path, source="s").dirty


def test_bundles_carry_only_what_the_mirror_lacks(
    repo: Path, mirror: CodeMirror, tmp_path: Path
) -> None:
    (repo / "weights.bin").write_bytes(os.urandom(512 * 1024))
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "weights")
    first, first_bytes = ship(repo, mirror, tmp_path)
    assert first_bytes > 512 * 1024 and mirror.have([first]) == {first}
    assert ship(repo, mirror, tmp_path) == (first, 0), "a commit the mirror has is not sent"
    second = commit(repo, "print('v2')\n")
    commit_sha, second_bytes = ship(repo, mirror, tmp_path)
    assert commit_sha == second and 0 < second_bytes < 2048
    # A branch far ahead of the mirror still finds a base: doubling distances reach back.
    for i in range(100):
        commit(repo, f"print({i})\n")
    _, far_bytes = ship(repo, mirror, tmp_path)
    assert far_bytes < 64 * 1024, far_bytes


def test_a_dirty_snapshot_ships_and_sits_on_its_commit(
    repo: Path, mirror: CodeMirror, tmp_path: Path
) -> None:
    head = git(repo, "rev-parse", "HEAD")
    (repo / "train.py").write_text("print('edited')\n")
    pinned = pin(repo, "HEAD", allow_dirty=True, scratch=tmp_path / "snap", source="s")
    bundle = write_bundle(pinned, set(), mirror.incoming / "dirty.bundle", tmp_path / "snap")
    assert bundle is not None
    mirror.receive_bundle("dirty.bundle", os.getuid())
    assert mirror.parent_of(pinned.checkout) == head
    shown = git(mirror.shared, "show", f"{pinned.checkout}:train.py")
    assert shown == "print('edited')"


def test_the_mirror_takes_only_the_callers_own_regular_bundle(
    repo: Path, mirror: CodeMirror, tmp_path: Path
) -> None:
    for name in ("../escape.bundle", "x.tar", ".hidden.bundle"):
        with pytest.raises(MirrorError, match="not one hpcops makes"):
            mirror.receive_bundle(name, os.getuid())
    with pytest.raises(MirrorError, match="no uploaded bundle"):
        mirror.receive_bundle("missing.bundle", os.getuid())
    target = tmp_path / "secret"
    target.write_text("not yours")
    (mirror.incoming / "link.bundle").symlink_to(target)
    with pytest.raises(MirrorError, match="cannot open"):
        mirror.receive_bundle("link.bundle", os.getuid())
    pinned = pin(repo, "HEAD", allow_dirty=False, scratch=tmp_path, source="s")
    write_bundle(pinned, set(), mirror.incoming / "other.bundle", tmp_path / "b")
    with pytest.raises(MirrorError, match="not a bundle uploaded by you"):
        mirror.receive_bundle("other.bundle", os.getuid() + 1)
    (mirror.incoming / "junk.bundle").write_text("not a bundle\n")
    with pytest.raises(MirrorError, match="refused the bundle"):
        mirror.receive_bundle("junk.bundle", os.getuid())
    # The caller's uploads are consumed, taken in or not; another user's stays theirs.
    assert [p.name for p in mirror.incoming.iterdir()] == ["other.bundle"]


def test_the_job_script_checks_out_the_commit_from_the_mirror(
    repo: Path,
    mirror: CodeMirror,
    tmp_path: Path,
    make_context: Callable[..., JobContext],
) -> None:
    first, _ = ship(repo, mirror, tmp_path)
    commit(repo, "print('v2')\n")
    spec = parse_spec(
        "name: c\nexperiment: e\ncommand: git rev-parse HEAD; cat train.py; pwd\n"
        f"code: {{repo: {repo}, commit: '{first}'}}\n",
        "spec.yaml",
    )
    objects = str(mirror.shared / "objects")
    ctx = make_context(tmp_path / "run", code=CodeCheckout(objects, first))
    ctx.run_dir.path.mkdir(parents=True)
    script = render_script(spec, ctx)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [first, "print('v1')", str(tmp_path / "run" / "src")]
    # A commit the mirror does not hold fails the job with a message, before the command.
    ctx = make_context(tmp_path / "run", code=CodeCheckout(objects, "ab" * 20))
    proc = subprocess.run(
        ["bash", "-c", render_script(spec, ctx)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1 and "could not check out commit" in proc.stderr
    assert "print(" not in proc.stdout


def test_a_bundle_with_a_malformed_object_is_refused(
    repo: Path, mirror: CodeMirror, tmp_path: Path
) -> None:
    """git does not fsck what it fetches from a bundle file; the mirror must anyway."""
    base = git(repo, "rev-parse", "HEAD")
    ship(repo, mirror, tmp_path)
    tree = git(repo, "rev-parse", "HEAD^{tree}")
    bad = f"tree {tree}\nparent {base}\nauthor x <x@y 1 +0000\ncommitter x <x@y> 1 +0000\n\nbad\n"
    (tmp_path / "commit").write_text(bad)
    sha = git(repo, "hash-object", "-t", "commit", "-w", "--literally", str(tmp_path / "commit"))
    git(repo, "update-ref", "refs/hpcops/ship", sha)
    bundle = str(mirror.incoming / "bad.bundle")
    git(repo, "bundle", "create", bundle, "refs/hpcops/ship", f"^{base}")
    with pytest.raises(MirrorError, match="badEmail"):
        mirror.receive_bundle("bad.bundle", os.getuid())
    assert mirror.have([sha]) == set(), "the malformed commit did not enter the mirror"
    first = pin(repo, sha, allow_dirty=False, scratch=tmp_path, source="s")
    write_bundle(first, set(), mirror.incoming / "other.bundle", tmp_path / "o")
    with pytest.raises(MirrorError, match=f"holds commit {sha}, not"):
        mirror.receive_bundle("other.bundle", os.getuid(), expected="ab" * 20)


class MirrorClient(LineClient):
    """The two API calls `hpcops submit` makes before submitting, answered by a mirror in this
    process (the daemon's own code for them is CodeMirror's)."""

    def __init__(self, mirror: CodeMirror) -> None:
        super().__init__()
        self.mirror = mirror

    def call(self, method: str, **params: Any) -> Any:
        assert method == "code_have"
        held = self.mirror.have(params["commits"])
        return {"have": sorted(held), "incoming": str(self.mirror.incoming)}

    def upload(self, local: Path, remote_dir: str, name: str) -> None:
        shutil.copyfile(local, Path(remote_dir) / name)


def test_specs_from_two_repositories_ship_together(
    repo: Path, mirror: CodeMirror, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "--quiet")
    (other / "x.py").write_text("x = 1\n")
    git(other, "add", ".")
    git(other, "commit", "--quiet", "-m", "x")
    ship(repo, mirror, tmp_path)  # the mirror knows the first repository already
    commit(repo, "print('v2')\n")
    specs = [
        (parse_spec(f"name: a\nexperiment: e\ncommand: c\ncode: {{repo: {r}}}\n", "s"), str(r))
        for r in (repo, other)
    ]
    prepared = prepare(MirrorClient(mirror), specs, allow_dirty=False, quiet=True)
    for item in prepared:
        assert item.code is not None and item.code["bundle"]
        mirror.receive_bundle(item.code["bundle"], os.getuid(), item.code["checkout"])
    heads = {git(repo, "rev-parse", "HEAD"), git(other, "rev-parse", "HEAD")}
    assert mirror.have(heads) == heads
    assert prepared[0].shipped["bundle_bytes"] < 2048, "only the new commit of the first"
