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
    out = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


@pytest.fixture
def mirror(tmp_path: Path) -> CodeMirror:
    m = CodeMirror(tmp_path / "code")
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
    mirror: CodeMirror, tmp_path: Path
) -> None:
    # The mirror is on scratch: a job can write its hooks and config. The daemon's next fetch
    # must run none of it (it would run on the login node with the daemon's secrets).
    commit = _repo(tmp_path / "proj")
    ran = tmp_path / "ran"
    hook = f'#!/bin/sh\necho "$0" >> {ran}\n'
    for name in ("reference-transaction", "post-checkout", "pre-auto-gc", "post-update"):
        path = mirror.path / "hooks" / name
        path.write_text(hook)
        path.chmod(0o755)
    with (mirror.path / "config").open("a") as config:
        config.write(
            f"[credential]\n\thelper = \"!sh -c 'echo helper >> {ran}'\"\n"
            f"[core]\n\tsshCommand = sh -c 'echo ssh >> {ran}'\n\tfsmonitor = {hook!r}\n"
            '[protocol "ext"]\n\tallow = always\n'
        )
    assert mirror.fetch_url(str(tmp_path / "proj"), "main") == commit
    with pytest.raises(MirrorError):
        mirror.fetch_url("ssh://unreachable.invalid/lab/proj.git", "main")
    assert not ran.exists(), ran.read_text()
