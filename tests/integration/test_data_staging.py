"""DVC data staged onto scratch once per content (real git + DVC repositories, a local and an SSH
remote, the real daemon and dev cluster)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import ACTIVE, Daemon, sacct_jobs_named
from lab import MEMBERS, Lab, new_lab

from hpcops.data.cache import ContentCache

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DEV_SSHD = REPO / "scripts" / "dev-sshd"
SSHD_PORT = int(os.environ.get("HPCOPS_DEV_SSHD_PORT", "2222"))
SMALL_FILES = 2000
IDENTITY = {
    "GIT_AUTHOR_NAME": "Ana",
    "GIT_AUTHOR_EMAIL": "ana@lab",
    "GIT_COMMITTER_NAME": "Ana",
    "GIT_COMMITTER_EMAIL": "ana@lab",
}
# The job prints one line: how many files it sees and a digest of their paths and contents.
READ_DATA = (
    f"{sys.executable} -c 'import hashlib, os, sys\n"
    'root = os.environ["HPCOPS_DATA_DS"]\n'
    "h = hashlib.sha256()\n"
    "names = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) "
    "for f in fs)\n"
    "for n in names:\n"
    '    h.update(n.encode()); h.update(open(os.path.join(root, n), "rb").read())\n'
    "print(len(names), h.hexdigest())'"
)


def run(cwd: Path, *argv: str, user: str | None = None) -> str:
    if user is not None:
        argv = ("runuser", "-u", user, "--", *argv)
    env = {
        **os.environ,
        **IDENTITY,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout.strip()


def digest(root: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    for name in names:
        h.update(name.encode())
        h.update((root / name).read_bytes())
    return len(names), h.hexdigest()


class DataRepo:
    """A git repository with a DVC-tracked data set pushed to a remote, and a spec reading it."""

    def __init__(
        self,
        root: Path,
        remote_url: str | None = None,
        user: str | None = None,
        keyfile: Path | None = None,
    ) -> None:
        self.path = root / f"data-repo-{uuid.uuid4().hex[:6]}"
        self.remote = root / f"remote-{uuid.uuid4().hex[:6]}"
        self.user = user
        self.path.mkdir()
        self.remote.mkdir()
        if user is not None:
            shutil.chown(self.path, user)
            shutil.chown(self.remote, user)
        self.git("init", "--quiet")
        self.dvc("init", "--quiet")
        self.dvc("remote", "add", "--default", "store", remote_url or str(self.remote))
        if keyfile is not None:
            self.dvc("remote", "modify", "store", "keyfile", str(keyfile))
        ds = self.path / "data" / "ds"
        (ds / "small").mkdir(parents=True)
        for i in range(SMALL_FILES):
            (ds / "small" / f"{i:05d}.txt").write_text(f"sample {i}\n")
        (ds / "large.bin").write_bytes(os.urandom(8 * 1024 * 1024))
        spec = {
            "name": f"data-{uuid.uuid4().hex[:8]}",
            "experiment": "data",
            "command": READ_DATA,
            "code": {"repo": "."},
            "data": [{"path": "data/ds"}],
        }
        (self.path / "spec.yaml").write_text(json.dumps(spec))
        self.commit("first version")

    def git(self, *args: str) -> str:
        return run(self.path, "git", *args, user=self.user)

    def dvc(self, *args: str) -> str:
        return run(self.path, str(VENV_BIN / "dvc"), *args, user=self.user)

    def commit(self, message: str) -> None:
        if self.user is not None:
            subprocess.run(["chown", "-R", self.user, str(self.path)], check=True)
        self.dvc("add", "--quiet", "data/ds")
        # The data reaches the remote before a commit names it, as a lab pushes: an on-data-change
        # schedule that sees the commit first would stage a version not there yet (CI saw its
        # staging fail: "DVC could not fetch its manifest of data/ds").
        self.dvc("push", "--quiet")
        self.git("add", ".")
        self.git("commit", "--quiet", "-m", message)

    @property
    def spec(self) -> Path:
        return self.path / "spec.yaml"

    def remote_objects(self) -> list[Path]:
        return sorted(p for p in self.remote.rglob("*") if p.is_file())


def staged(daemon: Daemon, run: int) -> dict[str, Any]:
    """The run, once ended, with its staging summary for data/ds."""
    shown = daemon.wait_ended(run, timeout=180)
    assert shown["state"] == "COMPLETED", shown
    shown = daemon.show(run)
    return {"run": shown, "ds": shown["staging"]["targets"]["data/ds"]}


def job_saw(daemon: Daemon, run: int) -> tuple[int, str]:
    count, hexdigest = daemon.cli("logs", str(run), check=True).stdout.split()
    return int(count), hexdigest


def test_a_version_is_fetched_once_and_a_new_one_only_for_its_changes(daemon: Daemon) -> None:
    repo = DataRepo(daemon.home)
    expected = digest(repo.path / "data" / "ds")
    first = staged(daemon, daemon.submit(repo.spec))
    data = first["run"]["data"]
    assert [(d["path"], d["nfiles"]) for d in data] == [("data/ds", SMALL_FILES + 1)]
    assert data[0]["md5"].endswith(".dir") and data[0]["rev"] == first["run"]["code"]["commit"]
    # Every file, and the directory's manifest, came from the remote once.
    assert first["ds"]["fetched_files"] == SMALL_FILES + 2
    assert job_saw(daemon, first["run"]["id"]) == expected

    second = staged(daemon, daemon.submit(repo.spec))
    assert second["ds"]["fetched_files"] == 0, "a cached version crosses nothing"
    assert second["ds"]["phase"] == "done" and second["run"]["data"] == data
    assert job_saw(daemon, second["run"]["id"]) == expected

    for i in (3, 500, 1999):
        (repo.path / "data" / "ds" / "small" / f"{i:05d}.txt").write_text(f"changed {i}\n")
    repo.commit("three samples relabelled")
    third = staged(daemon, daemon.submit(repo.spec))
    assert third["run"]["data"][0]["md5"] != data[0]["md5"], "a new version"
    assert third["ds"]["fetched_files"] == 3 + 1, "the changed files and the new manifest"
    assert job_saw(daemon, third["run"]["id"]) == digest(repo.path / "data" / "ds")
    text = daemon.cli("show", str(third["run"]["id"]), check=True).stdout
    assert f"md5 {third['run']['data'][0]['md5']}" in text and "$HPCOPS_DATA_DS" in text


def test_staging_runs_as_a_slurm_job_of_its_own_that_the_job_waits_for(daemon: Daemon) -> None:
    repo = DataRepo(daemon.home)
    run = staged(daemon, daemon.submit(repo.spec))["run"]
    states = [e["to"] for e in daemon.json("history", str(run["id"]))]
    assert states[:3] == ["QUEUED", "SUBMITTING", "STAGING"], states
    assert "PENDING" in states or "RUNNING" in states
    stage_job = run["staging_job_id"]
    assert stage_job and stage_job != run["slurm_job_id"]
    accounting = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", stage_job, "--format=JobName,State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert accounting == [f"{run['name']}-stage|COMPLETED"], accounting
    log = daemon.cli("logs", str(run["id"]), "--staging", check=True).stdout
    assert "hpcops staging data/ds: done" in log, log
    script = (Path(run["run_dir"]) / "job.sbatch").read_text()
    assert f"#SBATCH --dependency=afterok:{stage_job}" in script
    assert "#SBATCH --kill-on-invalid-dep=yes" in script
    assert "hpcops.data.stage" not in script, "the job itself stages nothing"


def test_inline_staging_stages_in_the_job_itself(daemon: Daemon) -> None:
    repo = DataRepo(daemon.home)
    spec = json.loads(repo.spec.read_text())
    repo.spec.write_text(json.dumps({**spec, "staging": "inline"}))
    repo.git("commit", "--quiet", "-am", "inline")
    result = staged(daemon, daemon.submit(repo.spec))
    run = result["run"]
    assert run["staging_job_id"] is None and result["ds"]["phase"] == "done"
    assert "STAGING" not in [e["to"] for e in daemon.json("history", str(run["id"]))]
    assert job_saw(daemon, run["id"]) == digest(repo.path / "data" / "ds")


def test_five_runs_of_a_new_version_fetch_it_once(daemon: Daemon) -> None:
    repo = DataRepo(daemon.home)
    runs = [int(r["id"]) for r in daemon.json("submit", *[str(repo.spec)] * 5)]
    results = [staged(daemon, run) for run in runs]
    fetched = sorted(r["ds"]["fetched_files"] for r in results)
    assert fetched == [0, 0, 0, 0, SMALL_FILES + 2], fetched
    expected = digest(repo.path / "data" / "ds")
    assert all(job_saw(daemon, run) == expected for run in runs)


def _corrupt(repo: DataRepo, daemon: Daemon, how: str) -> dict[str, Any]:
    victim = next(p for p in repo.remote_objects() if p.stat().st_size < 100)
    if how == "corrupt":
        victim.write_text("not what dvc pushed\n")
    else:
        victim.unlink()
    run = daemon.submit(repo.spec)
    return daemon.wait_ended(run, timeout=180)


@pytest.mark.parametrize("how", ["corrupt", "missing"])
def test_a_bad_remote_fails_the_run_clearly_and_leaves_the_cache_clean(
    daemon: Daemon, how: str
) -> None:
    repo = DataRepo(daemon.home)
    shown = _corrupt(repo, daemon, how)
    assert shown["state"] == "FAILED", shown
    detail = daemon.show(shown["id"])
    tail = detail["stderr_tail"]
    assert "hpcops staging failed" in tail, tail
    assert detail["reason"].startswith("data staging failed: "), detail["reason"]
    if how == "corrupt":
        assert "do not match their md5" in tail and "corrupt" in tail
    else:
        assert "DVC could not fetch" in tail
    assert detail["staging"]["targets"]["data/ds"]["phase"] == "failed"
    assert detail["staging"]["error"] and detail["reason"].endswith(detail["staging"]["error"])
    cache = ContentCache(daemon.home / "data-cache")
    bad = cache.verify(cache.all_objects())
    assert bad == [], "nothing half-written or corrupt stays in the cache"


TAMPER = """f="$HPCOPS_DATA_DS/small/00001.txt"
if echo tampered >> "$f" 2>/dev/null; then echo WRITE-OK; else echo WRITE-DENIED; fi
if touch "$HPCOPS_DATA_DS/new.txt" 2>/dev/null; then echo CREATE-OK; else echo CREATE-DENIED; fi
chmod u+w "$f" && echo tampered >> "$f" && echo OWN-VIEW-CHANGED
"""


def test_a_job_cannot_change_the_data_of_another_run(cluster: None) -> None:
    """Jobs run as the cache's owner (the lab's service account, not root): a job's view is its
    own to break; the cache and every other run's view stay as DVC pushed them."""
    lab = new_lab({"quotas": {}})
    work = Path("/tmp") / f"hpcops-data-{uuid.uuid4().hex[:6]}"
    work.mkdir(mode=0o755)
    try:
        repo = DataRepo(work, user=MEMBERS[0])
        spec = json.loads(repo.spec.read_text())
        tamper = repo.path / "tamper.yaml"
        tamper.write_text(json.dumps({**spec, "name": f"{spec['name']}-t", "command": TAMPER}))
        shutil.chown(tamper, MEMBERS[0])
        repo.git("add", "tamper.yaml")
        repo.git("commit", "--quiet", "-m", "a job that writes")
        first = int(lab.json(MEMBERS[0], "submit", str(tamper))["id"])
        lab.wait(lambda: _state(lab, first) not in ACTIVE, 180, "the tampering run ends")
        out = lab.ok(MEMBERS[0], "logs", str(first)).split()
        assert out == ["WRITE-DENIED", "CREATE-DENIED", "OWN-VIEW-CHANGED"], out
        second = int(lab.json(MEMBERS[0], "submit", str(repo.spec))["id"])
        lab.wait(lambda: _state(lab, second) not in ACTIVE, 180, "the reading run ends")
        count, seen = lab.ok(MEMBERS[0], "logs", str(second)).split()
        assert (int(count), seen) == digest(repo.path / "data" / "ds"), "another run: untouched"
        cache = ContentCache(lab.home / "data-cache")
        assert cache.verify(cache.all_objects()) == []
    finally:
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)


def _state(lab: Lab, run: int) -> str:
    return str(lab.json(MEMBERS[0], "show", str(run))["state"])


@pytest.fixture
def ssh_remote(daemon: Daemon) -> str:
    """A DVC remote on the dev sshd, reached as a lab member with a key of the daemon's account
    (root here), whose known_hosts holds the sshd's key as a user would have it."""
    user = MEMBERS[1]
    key = daemon.home / "id_dvc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run([str(DEV_SSHD), "up"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(DEV_SSHD), "add-key", user, f"{key}.pub"], check=True)
    host_line = subprocess.run(
        [str(DEV_SSHD), "known-hosts"], check=True, capture_output=True, text=True
    ).stdout.strip()
    known = Path("~/.ssh/known_hosts").expanduser()
    known.parent.mkdir(mode=0o700, exist_ok=True)
    if host_line not in (known.read_text() if known.exists() else ""):
        subprocess.run(["ssh-keygen", "-R", f"[127.0.0.1]:{SSHD_PORT}"], capture_output=True)
        with known.open("a") as f:
            f.write(host_line + "\n")
    store = Path(f"~{user}").expanduser() / f"dvc-store-{uuid.uuid4().hex[:6]}"
    store.mkdir()
    shutil.chown(store, user)
    return f"ssh://{user}@127.0.0.1:{SSHD_PORT}{store}"


def test_an_ssh_remote_is_fetched_through_sshd_once(daemon: Daemon, ssh_remote: str) -> None:
    repo = DataRepo(daemon.home, remote_url=ssh_remote, keyfile=daemon.home / "id_dvc")
    expected = digest(repo.path / "data" / "ds")
    first = staged(daemon, daemon.submit(repo.spec))
    assert first["ds"]["fetched_files"] == SMALL_FILES + 2
    assert job_saw(daemon, first["run"]["id"]) == expected
    second = staged(daemon, daemon.submit(repo.spec))
    assert second["ds"]["fetched_files"] == 0
    assert job_saw(daemon, second["run"]["id"]) == expected


def test_gc_keeps_what_active_runs_need_and_frees_the_rest(daemon: Daemon) -> None:
    daemon.stop()
    daemon.config["data"] = {"gc_grace_s": 0}
    daemon.start()
    repo = DataRepo(daemon.home)
    old = staged(daemon, daemon.submit(repo.spec))["run"]["data"][0]["md5"]
    for i in (7, 8):
        (repo.path / "data" / "ds" / "small" / f"{i:05d}.txt").write_text(f"new {i}\n")
    spec = json.loads(repo.spec.read_text())
    spec["command"] = f"{READ_DATA}; sleep 600"
    repo.spec.write_text(json.dumps(spec))
    repo.commit("two samples changed; a long run")
    active = daemon.submit(repo.spec)
    daemon.wait_state(active, {"RUNNING"}, timeout=120)
    deadline = time.monotonic() + 120
    while (daemon.show(active)["staging"] or {}).get("targets", {}).get("data/ds", {}).get(
        "phase"
    ) != "done":
        assert time.monotonic() < deadline, "the active run's data was not staged"
        time.sleep(0.5)
    versions = {v["md5"]: v for v in daemon.json("cache", "ls")}
    new = next(md5 for md5 in versions if md5 != old)
    assert versions[new]["needed"] and not versions[old]["needed"]

    dry = daemon.json("cache", "gc", "--older-than", "0s", "--dry-run")
    assert [r["md5"] for r in dry["removed"]] == [old] and dry["files_removed"] == 0
    result = daemon.json("cache", "gc", "--older-than", "0s", "--max-size", "0")
    assert [r["md5"] for r in result["removed"]] == [old], "the active run's version stays"
    assert result["files_removed"] == 2 + 1, "the old samples and the old manifest"
    versions = {v["md5"]: v for v in daemon.json("cache", "ls")}
    assert versions[new]["in_cache"] == "complete" and versions[old]["in_cache"] == "absent"
    daemon.cli("cancel", str(active), check=True)
    bad = daemon.cli("cache", "gc")
    assert bad.returncode == 2 and "--older-than" in bad.stderr


@pytest.mark.parametrize("fault", ["after_staging_sbatch", "after_sbatch"])
def test_kill_9_around_the_staging_job_submits_the_run_once(daemon: Daemon, fault: str) -> None:
    """Killed after the staging job went in (its run's job not yet), or after both went in but
    before the commit: after a restart the run completes, with exactly one job of its own."""
    from test_lifecycle import _crash_at

    daemon.config["slurm"]["submit_grace_s"] = 5
    repo = DataRepo(daemon.home)
    run = _crash_at(daemon, fault, repo.spec)
    data = staged(daemon, run)["run"]
    jobs = sacct_jobs_named(data["name"], at_least=1)
    assert [j["job_id"] for j in jobs] == [data["slurm_job_id"]], jobs
    assert job_saw(daemon, run) == digest(repo.path / "data" / "ds")
