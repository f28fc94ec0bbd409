"""The lab's code mirror with real git: a member's own repository on the login node is fetched
by the daemon's account, one slow repository holds up no other, and git's words reach the user."""

from __future__ import annotations

import os
import pwd
import subprocess
import threading
from pathlib import Path

import pytest

from hpcops.code.git import git_failure
from hpcops.code.mirror import CodeMirror, MirrorError


def _repo(path: Path) -> str:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(
        ["git", "-C", str(path), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q",
         "--allow-empty", "-m", "first"],
        check=True,
    )  # fmt: skip
    return _head(path)


def _head(path: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


@pytest.fixture
def mirror(tmp_path: Path) -> CodeMirror:
    m = CodeMirror(tmp_path / "code", state=tmp_path / "home" / "code-mirror")
    m.ensure()
    return m


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository away")
def test_a_members_own_repository_is_fetched(mirror: CodeMirror, tmp_path: Path) -> None:
    repo = tmp_path / "alice-proj"
    commit = _repo(repo)
    nobody = pwd.getpwnam("nobody")
    for dirpath, dirnames, filenames in os.walk(repo):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, nobody.pw_uid, nobody.pw_gid)
    assert mirror.fetch_url(str(repo), "main") == commit
    assert mirror.fetch_url(str(repo), commit) == commit
    assert mirror.have([commit]) == {commit}


def test_gits_own_words_reach_the_error(mirror: CodeMirror, tmp_path: Path) -> None:
    _repo(tmp_path / "proj")
    with pytest.raises(MirrorError, match="couldn't find remote ref no-such-branch"):
        mirror.fetch_url(str(tmp_path / "proj"), "no-such-branch")


def test_fatal_lines_survive_hints_after_them() -> None:
    stderr = (
        "fatal: detected dubious ownership in repository at '/home/alice/proj/.git'\n"
        "To add an exception for this directory, call:\n\n"
        "\tgit config --global --add safe.directory /home/alice/proj/.git\n"
        "fatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\nand the repository exists.\n"
    )
    message = git_failure(stderr, 128)
    assert "detected dubious ownership" in message
    assert "Could not read from remote repository" in message
    assert git_failure("", 3) == "exit 3"


def test_a_slow_repository_holds_up_no_other(
    mirror: CodeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = _repo(tmp_path / "quick")
    go = tmp_path / "go"
    # An SSH "server" that answers only once the test says so: the slow fetch is in progress
    # for as long as the test wants, holding its repository's lock.
    monkeypatch.setenv(
        "GIT_SSH_COMMAND", f"sh -c 'while [ ! -e {go} ]; do sleep 0.05; done; exit 1' --"
    )
    errors: list[Exception] = []

    def slow() -> None:
        try:
            mirror.fetch_url("ssh://unreachable.invalid/lab/proj.git", "main")
        except MirrorError as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    # With one lock for all repositories the quick fetch would wait for this, then find the
    # slow one over: the test fails instead of hanging.
    deadline = threading.Timer(30.0, go.touch)
    deadline.start()
    try:
        assert mirror.fetch_url(str(tmp_path / "quick"), "main") == commit
        assert thread.is_alive()  # the quick fetch did not wait for the slow one
    finally:
        go.touch()
        deadline.cancel()
        thread.join(timeout=60)
    assert len(errors) == 1


def test_hooks_and_config_a_job_plants_in_the_mirror_never_run(
    mirror: CodeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared repository is on scratch, and so, often, is the account's ~/.gitconfig: a job
    can write both. Nothing it writes there may run on the login node, where the daemon's git
    would run it with the daemon's secrets. Each planted command appends to `ran`."""
    commit = _repo(tmp_path / "proj")
    ran = tmp_path / "ran"
    hook = f'#!/bin/sh\necho "$0" >> {ran}\n'
    shared = mirror.shared
    (shared / "hooks").mkdir(exist_ok=True)
    for name in ("reference-transaction", "post-checkout", "pre-auto-gc", "post-update"):
        path = shared / "hooks" / name
        path.write_text(hook)
        path.chmod(0o755)
    # An alternate makes git ask for the alternate's refs, with the command config names.
    decoy = tmp_path / "decoy.git"
    subprocess.run(["git", "init", "-q", "--bare", str(decoy)], check=True)
    (shared / "objects" / "info" / "alternates").write_text(f"{decoy / 'objects'}\n")
    proj_url = (tmp_path / "proj").as_uri()
    planted = (
        f"[credential]\n\thelper = \"!sh -c 'echo helper >> {ran}'\"\n"
        f"[core]\n\tsshCommand = sh -c 'echo ssh >> {ran}'\n\tfsmonitor = {hook!r}\n"
        f"\talternateRefsCommand = sh -c 'echo alternate-refs >> {ran}'\n"
        f"\trepositoryformatversion = 1\n"
        '[protocol "ext"]\n\tallow = always\n'
        # A fetch of this URL (or any URL rewritten to it) runs the named upload-pack.
        f"[remote \"{proj_url}\"]\n\tuploadpack = sh -c 'echo uploadpack >> {ran}'\n"
        f'[url "{proj_url}"]\n\tinsteadOf = https://example.invalid/proj\n'
        # A partial clone fetches a missing object from its promisor when anything reads it.
        "[extensions]\n\tpartialClone = evil\n"
        f'[remote "evil"]\n\turl = {proj_url}\n\tpromisor = true\n'
        f"\tuploadpack = sh -c 'echo promisor >> {ran}'\n"
    )
    for repo in (shared, decoy):
        with (repo / "config").open("a") as config:
            config.write(planted)
    # The alternate's ref names an object it lacks: reading the ref asks its promisor.
    (decoy / "refs" / "heads" / "x").write_text("0" * 39 + "1\n")
    home = tmp_path / "account-home"  # the daemon account's home, shared with the jobs
    home.mkdir()
    # A template directory hands every new repository its config: a promisor's, here.
    template = tmp_path / "template"
    template.mkdir()
    (template / "config").write_text(planted)
    (home / ".gitconfig").write_text(f"{planted}[init]\n\ttemplateDir = {template}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    fresh = CodeMirror(tmp_path / "code", state=tmp_path / "fresh-home" / "code-mirror")
    fresh.ensure()  # an install or an upgrade after the job's work: a new git directory
    assert "promisor" not in (fresh.git_dir / "config").read_text()

    assert mirror.fetch_url(str(tmp_path / "proj"), "main") == commit
    assert mirror.fetch_url(proj_url, "main") == commit
    with pytest.raises(MirrorError):
        mirror.fetch_url("https://example.invalid/proj", "main")  # not rewritten: unreachable
    with pytest.raises(MirrorError):
        mirror.fetch_url("ssh://unreachable.invalid/lab/proj.git", "main")
    missing = "0123456789abcdef0123456789abcdef01234567"
    for each in (mirror, fresh):
        assert each.have([missing, commit]) == {commit}  # no promisor asked for the missing one
        assert each.parent_of(missing) is None
    assert not ran.exists(), ran.read_text()
    # The shared repository still serves jobs their checkouts: its objects are the mirror's.
    subprocess.run(["git", "-C", str(shared), "cat-file", "-e", commit], check=True)


def test_a_linked_incoming_folder_is_refused_and_what_it_points_at_is_left_alone(
    tmp_path: Path,
) -> None:
    """A job replaced incoming/ with a link to the daemon's home: the daemon must not open it
    to the lab's group, nor sweep its old files (daemon.lock among them) as stale uploads."""
    first = CodeMirror(tmp_path / "code", state=tmp_path / "home" / "code-mirror")
    first.ensure()
    target = tmp_path / "daemon-home"
    target.mkdir(mode=0o700)
    old = target / "old.bundle"
    old.write_text("not an upload")
    os.utime(old, (0, 0))
    first.incoming.rmdir()
    first.incoming.symlink_to(target)
    with pytest.raises(MirrorError, match="symbolic link"):
        CodeMirror(tmp_path / "code", state=tmp_path / "home" / "code-mirror").ensure()
    assert old.exists() and (target.stat().st_mode & 0o777) == 0o700


def test_stale_uploads_go_and_fresh_ones_and_other_files_stay(mirror: CodeMirror) -> None:
    stale, fresh, other = (mirror.incoming / n for n in ("a.bundle", "b.bundle", "notes.txt"))
    for path in (stale, fresh, other):
        path.write_text("x")
    os.utime(stale, (0, 0))
    os.utime(other, (0, 0))
    mirror.ensure()
    assert sorted(p.name for p in mirror.incoming.iterdir()) == ["b.bundle", "notes.txt"]


def test_refs_an_older_mirror_kept_in_the_shared_repository_are_taken_over(
    tmp_path: Path,
) -> None:
    """Before its git directory moved to the daemon's home, the mirror kept each run's commit
    alive with a ref in the shared repository: the first start after the move takes them over,
    loose or packed, so an admin's gc in the new git directory keeps those commits."""
    root = tmp_path / "code"
    shared = root / "mirror.git"
    subprocess.run(["git", "init", "-q", "--bare", str(shared)], check=True)
    proj = tmp_path / "proj"
    commits = [_repo(proj)]
    subprocess.run(
        ["git", "-C", str(shared), "fetch", "-q", str(proj), f"main:refs/hpcops/c/{commits[0]}"],
        check=True,
    )
    subprocess.run(["git", "-C", str(shared), "pack-refs", "--all"], check=True)  # one packed
    subprocess.run(
        ["git", "-C", str(proj), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q",
         "--allow-empty", "-m", "second"],
        check=True,
    )  # fmt: skip
    commits.append(_head(proj))
    subprocess.run(
        ["git", "-C", str(shared), "fetch", "-q", str(proj), f"main:refs/hpcops/c/{commits[1]}"],
        check=True,
    )  # and one loose
    (shared / "refs" / "hpcops" / "c" / ("f" * 40)).write_text(f"{commits[0]}\n")  # a forgery
    mirror = CodeMirror(root, state=tmp_path / "home" / "code-mirror")
    mirror.ensure()
    out = subprocess.run(
        ["git", "-C", str(mirror.git_dir), "for-each-ref", "--format=%(refname)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert sorted(out) == sorted(f"refs/hpcops/c/{c}" for c in commits)
    assert mirror.have(commits) == set(commits)


def test_a_new_code_root_gets_the_git_directory_pointed_at_its_objects(tmp_path: Path) -> None:
    """code.mirror_root changed: the daemon's git directory must read and write the objects
    the jobs check out from, the new ones."""
    state = tmp_path / "home" / "code-mirror"
    old = CodeMirror(tmp_path / "old", state=state)
    old.ensure()
    commit = _repo(tmp_path / "proj")
    assert old.fetch_url(str(tmp_path / "proj"), "main") == commit
    new = CodeMirror(tmp_path / "new", state=state)
    new.ensure()
    assert (new.git_dir / "objects").readlink() == new.shared / "objects"
    assert new.have([commit]) == set()
    assert new.fetch_url(str(tmp_path / "proj"), "main") == commit
    subprocess.run(["git", "-C", str(new.shared), "cat-file", "-e", commit], check=True)
