"""The exact code: a spec's git commit reaches the job through the lab's mirror (real git, real
daemon, real Slurm). Over SSH from a laptop, see test_remote.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from conftest import Daemon

from hpcops.client.client import Client
from hpcops.code.git import git as run_git
from hpcops.errors import InvalidInput

IDENTITY = {"GIT_AUTHOR_NAME": "Ana", "GIT_AUTHOR_EMAIL": "ana@lab"}
IDENTITY |= {"GIT_COMMITTER_NAME": "Ana", "GIT_COMMITTER_EMAIL": "ana@lab"}
COMMAND = 'git rev-parse HEAD; cat message.txt; echo "pwd=$PWD"'


def git(repo: Path, *args: str) -> str:
    return run_git(list(args), cwd=repo, env=IDENTITY).strip()


def make_repo(root: Path, *, spec_extra: dict[str, object] | None = None) -> tuple[Path, Path]:
    """A repository holding a message and a spec that runs its own code (committed: clean)."""
    repo = root / f"repo-{uuid.uuid4().hex[:6]}"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "message.txt").write_text("first version\n")
    spec = {
        "name": f"code-{uuid.uuid4().hex[:8]}",
        "experiment": "code",
        "command": COMMAND,
        "code": {"repo": "."},
        **(spec_extra or {}),
    }
    (repo / "spec.yaml").write_text(json.dumps(spec))
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "first")
    return repo, repo / "spec.yaml"


def stdout_of(daemon: Daemon, run: int) -> str:
    return daemon.cli("logs", str(run), check=True).stdout


def test_the_job_runs_the_exact_commit(daemon: Daemon) -> None:
    repo, spec = make_repo(daemon.home)
    head = git(repo, "rev-parse", "HEAD")
    result = daemon.json("submit", str(spec))
    assert result["code"]["commit"] == head and result["code"]["bundle_bytes"] > 0
    run = int(result["id"])
    assert daemon.wait_ended(run)["state"] == "COMPLETED"
    lines = stdout_of(daemon, run).splitlines()
    assert lines[0] == head, "the job checked out the commit the submitter had"
    assert lines[1] == "first version"
    shown = daemon.show(run)
    assert lines[2] == f"pwd={shown['run_dir']}/src", "the command runs in the checkout"
    assert shown["code"] == {
        "repo": str(repo),
        "commit": head,
        "checkout": head,
        "dirty": False,
    }
    assert f"commit: {head}" in shown["spec"], "the stored spec names the commit, not HEAD"
    text = daemon.cli("show", str(run), check=True).stdout
    assert f"{repo} @ {head}" in text

    # The same commit again: nothing to ship, the mirror has it.
    again = daemon.json("submit", str(spec))
    assert again["code"]["bundle_bytes"] == 0
    assert daemon.wait_ended(int(again["id"]))["state"] == "COMPLETED"


def test_a_dirty_tree_is_refused_unless_allowed_and_then_marked(daemon: Daemon) -> None:
    repo, spec = make_repo(daemon.home)
    head = git(repo, "rev-parse", "HEAD")
    (repo / "message.txt").write_text("not committed yet\n")
    (repo / "notes.txt").write_text("an untracked file counts too\n")
    refused = daemon.cli("submit", str(spec))
    assert refused.returncode == 2, refused
    assert "uncommitted changes" in refused.stderr and "message.txt" in refused.stderr
    assert "--allow-dirty" in refused.stderr
    assert daemon.json("ls", "--all") == [], "nothing was queued"

    result = daemon.json("submit", "--allow-dirty", str(spec))
    run = int(result["id"])
    assert daemon.wait_ended(run)["state"] == "COMPLETED"
    lines = stdout_of(daemon, run).splitlines()
    assert lines[1] == "not committed yet", "the job saw the working tree as it was"
    code = daemon.show(run)["code"]
    assert code["dirty"] is True and code["commit"] == head and code["checkout"] == lines[0]
    assert code["checkout"] != head
    assert "DIRTY" in daemon.cli("show", str(run), check=True).stdout
    assert git(repo, "status", "--porcelain") != "", "the user's tree is left as it was"
    assert git(repo, "rev-parse", "HEAD") == head


def test_a_workdir_is_a_folder_of_the_checkout(daemon: Daemon) -> None:
    repo, spec = make_repo(daemon.home, spec_extra={"workdir": "sub"})
    (repo / "sub").mkdir()
    (repo / "sub" / "message.txt").write_text("from sub\n")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "sub")
    run = daemon.submit(spec)
    assert daemon.wait_ended(run)["state"] == "COMPLETED"
    lines = stdout_of(daemon, run).splitlines()
    assert lines[1] == "from sub" and lines[2].endswith("/src/sub")


def test_a_repository_url_is_fetched_by_the_daemon(daemon: Daemon) -> None:
    repo, _ = make_repo(daemon.home)
    origin = daemon.home / "origin.git"
    git(daemon.home, "clone", "--quiet", "--bare", str(repo), str(origin))
    head = git(repo, "rev-parse", "HEAD")
    spec = daemon.home / "url.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": f"url-{uuid.uuid4().hex[:8]}",
                "experiment": "code",
                "command": COMMAND,
                "code": {"repo": f"file://{origin}", "commit": "main"},
            }
        )
    )
    run = daemon.submit(spec)
    assert daemon.show(run)["code"]["commit"] == head, "the branch was resolved at submission"
    assert daemon.wait_ended(run)["state"] == "COMPLETED"
    assert stdout_of(daemon, run).splitlines()[0] == head

    spec.write_text(spec.read_text().replace('"main"', '"no-such-branch"'))
    bad = daemon.cli("submit", str(spec))
    assert bad.returncode == 2 and "no-such-branch" in bad.stderr, bad


def test_bad_code_fields_are_named_and_queue_nothing(daemon: Daemon) -> None:
    repo, spec = make_repo(daemon.home)
    cases = {
        "code.commit": {"repo": ".", "commit": "no-such-branch"},
        "code.repo": {"repo": "/nonexistent/repo"},
    }
    for field, code in cases.items():
        data = json.loads(spec.read_text())
        data["code"] = code
        bad = repo / "bad.yaml"
        bad.write_text(json.dumps(data))
        proc = daemon.cli("submit", str(bad))
        assert proc.returncode == 2 and field in proc.stderr, (field, proc.stderr)
    for text, field in (
        ("code: {repo: 'ftp://host/x'}", "code.repo"),
        ("code: {repo: /x, commit: 'a..b'}", "code.commit"),
        ("code: {repo: /x, comit: main}", "comit"),
        ("code: {repo: '--upload-pack=evil'}", "code.repo"),
        ("workdir: ../up\ncode: {repo: /x}", "workdir"),
    ):
        path = daemon.home / "bad-inline.yaml"
        path.write_text(f"name: bad\nexperiment: code\ncommand: 'true'\n{text}\n")
        proc = daemon.cli("submit", str(path))
        assert proc.returncode == 2 and field in proc.stderr, (text, proc.stderr)
    assert daemon.json("ls", "--all") == []


def test_the_api_refuses_a_commit_the_mirror_does_not_hold(daemon: Daemon) -> None:
    """A client that skips shipping cannot queue a run its job could never check out."""
    spec = (
        "name: api-code\nexperiment: code\ncommand: 'true'\n"
        f"code: {{repo: /somewhere, commit: '{'ab' * 20}'}}\n"
    )
    with Client(daemon.home / "hpcops.sock") as client:
        try:
            client.call("submit", specs=[{"yaml": spec, "source": "api"}])
        except InvalidInput as exc:
            assert "not in the lab's code mirror" in str(exc) and "code.commit" in str(exc)
        else:
            raise AssertionError("a commit the mirror lacks was accepted")
        for bad_code in ({"bundle": "../../etc/passwd"}, {"dirty": "yes"}, {"checkout": "HEAD"}):
            try:
                client.call("submit", specs=[{"yaml": spec, "source": "api", "code": bad_code}])
            except InvalidInput as exc:
                assert "params.specs[].code" in str(exc)
            else:
                raise AssertionError(f"{bad_code} was accepted")
    assert daemon.json("ls", "--all") == []
