"""Scheduled retraining with the real daemon, its APScheduler thread and the real dev cluster.

Schedules here fire every few seconds (`--every`, with the config's schedules.min_interval_s
lowered to 1) so that the suite stays fast; cron expressions are checked in tests/unit.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ACTIVE, Daemon, running_daemon, sacct_jobs_named, wait_for, write_spec
from lab import LEAD, MEMBERS, Lab, new_lab
from scratch import made_here

M1 = MEMBERS[0]


@pytest.fixture
def sd(cluster: None) -> Iterator[Daemon]:
    """A daemon whose schedules may fire every second."""
    yield from running_daemon(
        "hpcops-sched", slurm={"squeue_interval_s": 5}, schedules={"min_interval_s": 1}
    )


def _add(d: Daemon, spec: Path, *options: str) -> dict[str, Any]:
    result: dict[str, Any] = d.json("schedule", "add", str(spec), *options)
    return result


def _firings(d: Daemon, schedule: str) -> list[dict[str, Any]]:
    """Oldest first."""
    shown = d.json("schedule", "show", schedule, "--firings", "1000")
    return list(reversed(shown["firings"]))


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_schedule_every_few_seconds_queues_runs_that_complete_on_slurm(
    sd: Daemon, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, "sched-every", "echo trained")
    added = _add(sd, spec, "--every", "2", "--name", "every2")
    assert added["status"] == "active" and added["cadence"] == "every 2 s"

    def two_completed() -> list[dict[str, Any]]:
        done = [f for f in _firings(sd, "every2") if f["run_state"] == "COMPLETED"]
        return done if len(done) >= 2 else []

    done = wait_for(two_completed, 120, "two firings whose runs completed")
    for firing in done:
        run = sd.show(firing["run_id"])
        assert (run["schedule_id"], run["firing_id"]) == (added["id"], firing["id"])
        assert run["schedule_name"] == "every2"
        assert run["exit_code"] == 0 and run["slurm_job_id"]
        history = sd.json("history", str(firing["run_id"]))
        assert (
            f"queued by schedule {added['id']} (every2), firing {firing['id']}"
            in (history[0]["reason"])
        )
    text = sd.cli("show", str(done[0]["run_id"]), check=True).stdout
    assert f"schedule:   {added['id']} (every2), firing {done[0]['id']}" in text
    # Every firing is two seconds after the one before, on the schedule's grid.
    times = [_epoch(f["scheduled_for"]) for f in _firings(sd, "every2")]
    assert all(b - a == pytest.approx(2, abs=0.01) for a, b in itertools.pairwise(times))

    sd.cli("schedule", "rm", "every2", check=True)
    count = len(_firings(sd, str(added["id"])))
    time.sleep(4.5)
    assert len(_firings(sd, str(added["id"]))) == count, "a removed schedule fired"
    listed = sd.json("schedule", "ls", "--all")
    assert [s["status"] for s in listed] == ["removed"]
    assert sd.json("schedule", "ls") == []
    # Slurm ran exactly one job per queued run.
    queued = [f for f in _firings(sd, str(added["id"])) if f["run_id"]]
    assert len(sacct_jobs_named(spec.stem, at_least=len(queued))) == len(queued)


def test_a_daemon_down_across_several_firings_makes_exactly_one_catch_up_run(
    sd: Daemon, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, "sched-catchup", "true")
    _add(sd, spec, "--every", "2", "--name", "catchup", "--allow-overlap")
    wait_for(lambda: _firings(sd, "catchup"), 10, "a first firing")
    sd.stop()
    stopped_at = time.time()
    time.sleep(9)  # about four firings missed
    sd.start()
    # Firings wait for the first tick's reconciliation after a start, so a due time that passes
    # while the daemon starts is missed too: the catch-up is for the latest missed time, which
    # may fall after start() returned. What matters is one catch-up, and none of the missed
    # times fired on its own.
    catch_ups = wait_for(
        lambda: [f for f in _firings(sd, "catchup") if f["kind"] == "catch-up"],
        30,  # the first tick comes first: under CI's load it has taken 10 s
        "the catch-up firing",
    )
    assert len(catch_ups) == 1, catch_ups
    catch_up = catch_ups[0]
    assert _epoch(catch_up["scheduled_for"]) > stopped_at
    on_time_in_the_gap = [
        f
        for f in _firings(sd, "catchup")
        if f["kind"] != "catch-up"
        and stopped_at < _epoch(f["scheduled_for"]) < _epoch(catch_up["scheduled_for"])
    ]
    assert on_time_in_the_gap == []
    assert catch_up["outcome"] == "submitted"
    # The schedule goes on firing on time after its one catch-up.
    wait_for(
        lambda: [
            f
            for f in _firings(sd, "catchup")
            if f["kind"] == "scheduled"
            and _epoch(f["scheduled_for"]) > _epoch(catch_up["scheduled_for"])
        ],
        10,
        "an on-time firing after the catch-up",
    )
    assert [f["id"] for f in _firings(sd, "catchup") if f["kind"] == "catch-up"] == [catch_up["id"]]
    missed = re.search(r"(\d+) firing\(s\) missed", catch_up["reason"])
    assert missed is not None and int(missed.group(1)) >= 3, catch_up["reason"]
    assert sd.wait_ended(catch_up["run_id"])["state"] == "COMPLETED"
    # No burst: every run the schedule queued belongs to one firing.
    sd.cli("schedule", "pause", "catchup", check=True)
    runs = [r for r in sd.json("ls", "--all") if r["schedule_id"] is not None]
    firing_ids = [r["firing_id"] for r in runs]
    assert len(firing_ids) == len(set(firing_ids))
    assert len(runs) == len([f for f in _firings(sd, "catchup") if f["run_id"]])


def test_pause_resume_and_run_now(sd: Daemon, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "sched-pause", "true")
    _add(sd, spec, "--every", "2", "--name", "pausable")
    wait_for(lambda: _firings(sd, "pausable"), 10, "a first firing")
    paused = sd.json("schedule", "pause", "pausable")
    assert (paused["status"], paused["next_fire_at"]) == ("paused", None)
    paused_at = time.time()
    time.sleep(5)
    assert all(_epoch(f["scheduled_for"]) < paused_at + 0.5 for f in _firings(sd, "pausable"))

    # run-now fires a paused schedule once, and prints the run id for scripts. (After the runs
    # queued so far have ended: the shared cluster may keep one pending, and run-now would then
    # be skipped for overlap, as the overlap test shows.)
    for firing in _firings(sd, "pausable"):
        if firing["run_id"]:
            sd.wait_ended(firing["run_id"])
    proc = sd.cli("schedule", "run-now", "pausable", check=True)
    run_now_id = int(proc.stdout)
    assert sd.wait_ended(run_now_id)["state"] == "COMPLETED"
    latest = _firings(sd, "pausable")[-1]
    assert (latest["kind"], latest["run_id"], latest["actor"]) == ("run-now", run_now_id, "root")

    resumed_at = time.time()
    assert sd.json("schedule", "resume", "pausable")["status"] == "active"
    after = wait_for(
        lambda: [
            f
            for f in _firings(sd, "pausable")
            if _epoch(f["scheduled_for"]) > resumed_at and f["outcome"] != "pending"
        ],
        20,
        "a firing after resume, with its outcome",
    )
    # The pause is not made up: the first firing after it is an ordinary one.
    assert after[0]["kind"] == "scheduled" and after[0]["outcome"] == "submitted"
    actions = [(e["action"], e["before"], e["after"]) for e in sd.json("audit")]
    assert ("schedule_pause", "active", "paused") in actions
    assert ("schedule_resume", "paused", "active") in actions
    assert any(a[0] == "schedule_run_now" for a in actions)


def test_overlap_is_skipped_and_recorded_while_the_previous_run_is_running(
    sd: Daemon, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, "sched-long", "sleep 7")
    _add(sd, spec, "--every", "2", "--name", "long")

    def skipped() -> list[dict[str, Any]]:
        return [f for f in _firings(sd, "long") if f["outcome"] == "skipped"]

    skips = wait_for(skipped, 30, "a firing skipped for overlap")
    first_run = _firings(sd, "long")[0]["run_id"]
    assert f"run {first_run} from an earlier firing is still" in skips[0]["reason"]
    # run-now follows the same rule, and says so with exit status 1.
    proc = sd.cli("schedule", "run-now", "long")
    assert proc.returncode == 1 and "does not overlap runs" in proc.stderr, proc.stderr
    sd.wait_ended(first_run, timeout=120)
    wait_for(
        lambda: [f for f in _firings(sd, "long") if f["run_id"] not in (None, first_run)],
        20,
        "a run queued once the long one ended",
    )
    sd.cli("schedule", "pause", "long", check=True)
    active = [r for r in sd.json("ls", "--all") if r["state"] in ACTIVE]
    assert len(active) <= 1, active  # never two runs of the schedule at once
    shown = sd.cli("schedule", "show", "long", check=True).stdout
    assert "skipped" in shown and "does not overlap runs" in shown


@pytest.mark.parametrize("fault", ["firing_before_commit", "firing_after_commit"])
def test_kill_9_mid_firing_neither_loses_nor_duplicates_the_run(
    sd: Daemon, tmp_path: Path, fault: str
) -> None:
    spec = write_spec(tmp_path, "sched-kill", "true")
    sd.stop()
    sd.start(HPCOPS_FAULT=fault)
    pid = sd.pid()
    _add(sd, spec, "--every", "3", "--name", "killed", "--allow-overlap")
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 15, "the daemon killed at the fault")
    died_at = time.time()
    sd.start()  # no fault this time
    firings = wait_for(
        lambda: [f for f in _firings(sd, "killed") if f["run_id"]], 15, "a queued run"
    )
    first = firings[0]
    if fault == "firing_after_commit":
        # Committed before the kill; APScheduler had not recorded it and handed the same time
        # over again after the restart: it is there once, with its one run.
        assert _epoch(first["scheduled_for"]) < died_at and first["kind"] == "scheduled"
    else:
        # Nothing was committed; the time came due again after the restart: fired then (still
        # on time), or covered by the one catch-up run if later times were missed too.
        assert _epoch(first["scheduled_for"]) < died_at or first["kind"] == "catch-up", first
    times = [f["scheduled_for"] for f in _firings(sd, "killed")]
    assert len(times) == len(set(times))
    sd.cli("schedule", "pause", "killed", check=True)
    for firing in firings:
        assert sd.wait_ended(firing["run_id"])["state"] == "COMPLETED"
    runs = [r for r in sd.json("ls", "--all") if r["schedule_id"] is not None]
    queued = [f["run_id"] for f in _firings(sd, "killed") if f["run_id"]]
    assert sorted(r["id"] for r in runs) == sorted(queued)
    assert len(sacct_jobs_named(spec.stem, at_least=len(runs))) == len(runs)


def test_a_broken_schedule_is_reported_and_does_not_stop_the_others(
    sd: Daemon, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "lab.sh.j2").write_text('{% extends "default.sh.j2" %}\n')
    sd.stop()
    sd.config["template_dirs"] = [str(templates)]
    sd.start()
    fragile = write_spec(tmp_path, "sched-fragile", "true", template="lab")
    sturdy = write_spec(tmp_path, "sched-sturdy", "true")
    _add(sd, fragile, "--every", "2", "--name", "fragile", "--allow-overlap")
    _add(sd, sturdy, "--every", "2", "--name", "sturdy", "--allow-overlap")
    (templates / "lab.sh.j2").unlink()  # the lab's template is gone

    listed = {s["name"]: s for s in sd.json("schedule", "ls")}
    assert listed["fragile"]["status"] == "broken"
    assert "lab" in listed["fragile"]["problem"]
    assert listed["sturdy"]["status"] == "active" and listed["sturdy"]["problem"] is None
    errors = wait_for(
        lambda: [f for f in _firings(sd, "fragile") if f["outcome"] == "error"],
        10,
        "a failed firing",
    )
    assert errors[0]["run_id"] is None
    wait_for(
        lambda: len([f for f in _firings(sd, "sturdy") if f["run_state"] == "COMPLETED"]) >= 2,
        120,
        "the sturdy schedule's runs",
    )
    table = sd.cli("schedule", "ls", check=True).stdout
    assert "broken" in table
    sd.cli("schedule", "pause", "fragile", "sturdy", check=True)


def test_bad_schedule_input_is_refused_and_changes_nothing(sd: Daemon, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "sched-bad", "true")
    for options, message in [
        (["--cron", "0 3 * *"], "has 5 fields"),
        (["--cron", "0 3 * * 1", "--timezone", "Europe/Berln"], "did you mean 'Europe/Berlin'"),
        (["--cron", "0 3 1 * 1"], "restricts both"),
        (["--cron", "0 3 * * 1", "--every", "60"], "not both"),
        ([], "needs exactly one of --cron"),
        (["--cron", "0 3 * * 1", "--name", "no spaces"], "name:"),
    ]:
        proc = sd.cli("schedule", "add", str(spec), *options)
        assert proc.returncode == 2, (options, proc.stderr)
        assert message in proc.stderr, (options, proc.stderr)
    # The API checks what a client sends, whatever the CLI did before.
    from hpcops.client.client import Client
    from hpcops.errors import InvalidInput

    with Client(sd.home / "hpcops.sock") as client:
        yaml_text = spec.read_text()
        for params, message in [
            ({"every_s": "60"}, "params.every_s must be int"),
            ({"every_s": True}, "params.every_s must be int"),
            ({"cron": ["0", "3"]}, "params.cron must be str"),
            ({"cron": "0 3 * * 1", "allow_overlap": "yes"}, "params.allow_overlap must be bool"),
            ({"every_s": 0}, "every: 0 s is outside 1-"),
        ]:
            with pytest.raises(InvalidInput, match=message):
                client.call("schedule_add", yaml=yaml_text, source="api", **params)
        with pytest.raises(InvalidInput, match="named by its id or its name"):
            client.call("schedule_pause", schedule=True)
    assert sd.json("schedule", "ls", "--all") == []
    assert sd.cli("schedule", "show", "nope").returncode == 4
    assert sd.cli("schedule", "pause", "999").returncode == 4
    # A schedule: block in the spec is enough, and options win over it.
    block = write_spec(
        tmp_path, "sched-block", "true", schedule={"cron": "0 3 * * 1", "timezone": "UTC"}
    )
    added = _add(sd, block, "--timezone", "Europe/Berlin", "--name", "weekly")
    assert added["cadence"] == "cron 0 3 * * 1 (Europe/Berlin)"
    assert sd.cli("schedule", "add", str(block)).returncode == 0  # named after the spec
    assert sd.cli("schedule", "add", str(block), "--name", "weekly").returncode == 2  # taken
    proc = sd.cli("submit", str(block))
    assert proc.returncode == 0 and "schedule add" in proc.stderr


@pytest.fixture
def lab(cluster: None) -> Iterator[Lab]:
    lab = new_lab({"quotas": {"lab": {"jobs": 0}}, "schedules": {"min_interval_s": 1}})
    yield lab
    lab.stop()


def test_only_the_owner_or_a_lead_changes_a_schedule_and_refusals_are_audited(lab: Lab) -> None:
    lead_spec = lab.spec(LEAD, "lead-sched", "true")
    lead_schedule = lab.json(LEAD, "schedule", "add", lead_spec, "--cron", "0 3 * * 1")
    ref = str(lead_schedule["id"])
    for action in ("pause", "rm", "run-now"):
        proc = lab.cli(M1, "schedule", action, ref)
        assert proc.returncode == 5, (action, proc.stderr)
        assert f"this schedule belongs to {LEAD}" in proc.stderr
    assert lab.json(M1, "schedule", "show", ref)["status"] == "active"  # members may read

    # A member's own schedule: theirs to change, a lead's too; its runs are the member's.
    own = lab.json(M1, "schedule", "add", lab.spec(M1, "m1-sched", "true"), "--every", "3600")
    run_id = int(lab.ok(M1, "schedule", "run-now", str(own["id"])).strip())
    run = lab.json(M1, "show", str(run_id))
    assert (run["owner"], run["schedule_id"]) == (M1, own["id"])
    lab.ok(M1, "cancel", str(run_id))
    lab.ok(M1, "schedule", "pause", str(own["id"]))
    lab.ok(LEAD, "schedule", "resume", str(own["id"]))
    # The member's priority range holds for schedules as for submit.
    greedy_spec = lab.spec(M1, "greedy", "true", priority=50)
    greedy = lab.cli(M1, "schedule", "add", greedy_spec, "--every", "60")
    assert greedy.returncode == 5 and "member range" in greedy.stderr
    lab.ok(LEAD, "schedule", "rm", ref)

    audit = lab.json(LEAD, "audit", "--limit", "200")
    refused = {(e["actor"], e["action"]) for e in audit if not e["allowed"]}
    assert {
        (M1, "schedule_pause"),
        (M1, "schedule_remove"),
        (M1, "schedule_run_now"),
        (M1, "schedule_add"),
    } <= refused
    allowed = {(e["actor"], e["action"], e["target"]) for e in audit if e["allowed"]}
    assert (LEAD, "schedule_remove", f"schedule {ref}") in allowed
    assert (M1, "schedule_pause", f"schedule {own['id']}") in allowed
    assert (LEAD, "schedule_resume", f"schedule {own['id']}") in allowed


def test_a_new_commit_between_two_firings_is_what_the_next_run_uses(sd: Daemon) -> None:
    """The schedule names a branch of a repository on the login node: each firing resolves it,
    so after a new commit (new code and a new data version) the next run has both."""
    import json

    from test_data_staging import DataRepo

    repo = DataRepo(sd.home)
    branch = repo.git("branch", "--show-current")
    spec = json.loads(repo.spec.read_text())
    spec["code"] = {"repo": str(repo.path), "commit": branch}
    path = sd.home / "retrain.yaml"
    path.write_text(json.dumps(spec))
    _add(sd, path, "--every", "2", "--name", "retrain")

    def latest_done() -> dict[str, Any] | None:
        done = [f for f in _firings(sd, "retrain") if f["run_state"] == "COMPLETED"]
        return sd.show(done[-1]["run_id"]) if done else None

    first = wait_for(latest_done, 180, "a first retraining completes")
    sd.cli("schedule", "pause", "retrain", check=True)
    assert first["code"]["commit"] == repo.git("rev-parse", "HEAD")
    (repo.path / "data" / "ds" / "small" / "00042.txt").write_text("relabelled\n")
    repo.commit("new labels")
    new_head = repo.git("rev-parse", "HEAD")
    sd.cli("schedule", "resume", "retrain", check=True)

    def run_on_new_commit() -> dict[str, Any] | None:
        run = latest_done()
        return run if run is not None and run["code"]["commit"] == new_head else None

    second = wait_for(run_on_new_commit, 180, "a retraining on the new commit completes")
    assert second["data"][0]["md5"] != first["data"][0]["md5"], "and on the new data version"
    assert second["data"][0]["rev"] == new_head


def test_on_data_change_fires_for_each_new_data_version_and_not_for_code_commits(
    sd: Daemon,
) -> None:
    """The schedule watches a branch of a repository on the login node: every check resolves it
    and reads the data's md5, queueing nothing; only a new data version queues a run."""
    import json

    from test_data_staging import DataRepo

    repo = DataRepo(sd.home)
    branch = repo.git("branch", "--show-current")
    spec = json.loads(repo.spec.read_text())
    spec["code"] = {"repo": str(repo.path), "commit": branch}
    mirror = sd.home / "code" / "mirror.git"

    # Refused, with the field named, and nothing scheduled: a target that is not DVC-tracked,
    # a spec without data, a second trigger, a check interval without the trigger.
    missing = sd.home / "missing.yaml"
    missing.write_text(json.dumps({**spec, "data": [{"path": "data/nope"}]}))
    no_data = sd.home / "no-data.yaml"
    no_data.write_text(json.dumps({k: v for k, v in spec.items() if k != "data"}))
    path = sd.home / "watch.yaml"
    path.write_text(json.dumps(spec))
    for args, message in [
        ([missing, "--on-data-change"], "data[0]: data/nope.dvc is not in the repository"),
        ([no_data, "--on-data-change"], "data: the spec has no data: targets to watch"),
        ([path, "--on-data-change", "--every", "60"], "give it, --cron or --every, not two"),
        ([path, "--every", "60", "--check-every", "5"], "check-every: is how often"),
    ]:
        proc = sd.cli("schedule", "add", *map(str, args))
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    from hpcops.client.client import Client
    from hpcops.errors import InvalidInput

    with Client(sd.home / "hpcops.sock") as client:
        for params, message in [
            ({"on_data_change": "yes"}, "params.on_data_change must be bool"),
            ({"on_data_change": True, "check_every_s": 0}, "check-every: 0 s is outside 1-"),
            ({"on_data_change": True, "cron": "0 3 * * 1"}, "cannot be combined with --cron"),
        ]:
            with pytest.raises(InvalidInput, match=re.escape(message)):
                client.call("schedule_add", yaml=path.read_text(), source="api", **params)
    assert sd.json("schedule", "ls", "--all") == []

    added = _add(sd, path, "--on-data-change", "--check-every", "2", "--name", "watch")
    assert added["cadence"] == "on data change, checked every 2 s"
    assert (added["on_data_change"], added["check_every_s"]) == (True, 2)

    def runs_of(firings: list[dict[str, Any]]) -> list[int]:
        return [f["run_id"] for f in firings if f["run_id"]]

    # Never fired: the first check fires.
    first_firing = wait_for(lambda: _firings(sd, "watch"), 20, "the first check fires")[0]
    assert (first_firing["kind"], first_firing["outcome"]) == ("data-change", "submitted")
    assert first_firing["reason"].startswith("first version: data/ds ")
    first = sd.wait_ended(first_firing["run_id"], timeout=180)
    assert first["state"] == "COMPLETED", first
    first_md5 = sd.show(first_firing["run_id"])["data"][0]["md5"]
    assert first_firing["data"] == [{"path": "data/ds", "md5": first_md5}]

    def checks_since(moment: float, count: int) -> dict[str, Any] | None:
        """The schedule, once its checks have gone on for `count` intervals after `moment`."""
        shown: dict[str, Any] = sd.json("schedule", "show", "watch")
        check = shown["last_check"]
        return shown if check and _epoch(check["at"]) >= moment + 2 * count else None

    # A commit that changes only code: the checks see it (the mirror fetched it), fire nothing.
    (repo.path / "train.py").write_text("print('a better model')\n")
    repo.commit("code only")
    code_head = repo.git("rev-parse", "HEAD")
    committed = time.time()
    shown = wait_for(lambda: checks_since(committed, 3), 30, "three checks after the commit")
    assert shown["last_check"]["ok"] and shown["last_check"]["summary"] == "no change"
    assert first_md5[:12] in shown["last_check"]["result"]
    assert subprocess.run(["git", "-C", str(mirror), "cat-file", "-e", code_head]).returncode == 0
    assert len(_firings(sd, "watch")) == 1, _firings(sd, "watch")

    # A commit that changes the data: exactly one new firing, whose run stages the new version.
    (repo.path / "data" / "ds" / "small" / "00042.txt").write_text("relabelled\n")
    repo.commit("new labels")
    data_head = repo.git("rev-parse", "HEAD")
    second_firing = wait_for(
        lambda: _firings(sd, "watch")[1:], 20, "a firing for the new data version"
    )[0]
    second = sd.wait_ended(second_firing["run_id"], timeout=180)
    assert second["state"] == "COMPLETED", second
    second_run = sd.show(second_firing["run_id"])
    new_md5 = second_run["data"][0]["md5"]
    assert new_md5 != first_md5 and second_run["data"][0]["rev"] == data_head
    assert second_run["code"]["commit"] == data_head
    assert second_firing["reason"] == f"changed: data/ds {first_md5[:12]} -> {new_md5[:12]}"
    assert second_firing["data"] == [{"path": "data/ds", "md5": new_md5}]
    ended = time.time()
    wait_for(lambda: checks_since(ended, 3), 30, "three checks after the second run")
    firings = _firings(sd, "watch")
    assert len(firings) == 2 and len(set(runs_of(firings))) == 2, firings
    table = sd.cli("schedule", "ls", check=True).stdout
    assert "on data change, checked every 2 s" in table and "no change" in table

    # The repository goes away: the check fails, the schedule shows as broken with the reason,
    # and nothing fires; back again, it is active and still fires nothing for the same data.
    moved = repo.path.with_name(repo.path.name + "-away")
    repo.path.rename(moved)
    broken = wait_for(
        lambda: [s for s in sd.json("schedule", "ls") if s["status"] == "broken"],
        20,
        "the failed check shows",
    )[0]
    assert broken["last_check"]["ok"] is False
    assert broken["last_error"].startswith("failed: code.commit: "), broken["last_error"]
    assert "broken" in sd.cli("schedule", "ls", check=True).stdout
    moved.rename(repo.path)
    wait_for(lambda: sd.json("schedule", "show", "watch")["status"] == "active", 20, "a good check")
    assert sd.json("schedule", "show", "watch")["last_error"] is None
    assert len(_firings(sd, "watch")) == 2
    sd.cli("schedule", "rm", "watch", check=True)


def test_a_schedule_of_a_members_own_repository_fires(lab: Lab) -> None:
    """Issue 12: a member's schedule whose code is their own repository on the login node. The
    daemon's account fetches from a repository it does not own; git calls that "dubious
    ownership" and refused every firing, with its own words lost from the error."""
    repo = made_here(Path("/tmp") / f"hpcops-m1-repo-{time.time_ns()}")
    member = MEMBERS[0]

    def as_member(*argv: str) -> str:
        proc = subprocess.run(
            ["runuser", "-u", member, "--", *argv],
            capture_output=True,
            text=True,
            check=True,
            cwd="/tmp",
        )
        return proc.stdout.strip()

    as_member("git", "init", "-q", "-b", "main", str(repo))
    as_member("sh", "-c", f"echo 'print(1)' > {repo}/train.py")
    identity = ["-c", "user.email=m1@lab", "-c", "user.name=m1"]
    as_member("git", "-C", str(repo), "add", "train.py")
    as_member("git", "-C", str(repo), *identity, "commit", "-q", "-m", "first")
    head = as_member("git", "-C", str(repo), "rev-parse", "HEAD")
    assert Path(repo).stat().st_uid != 0

    spec = lab.spec(
        member, "own-repo", "python3 train.py", code={"repo": str(repo), "commit": "main"}
    )
    schedule = lab.json(member, "schedule", "add", spec, "--every", "3600")
    proc = lab.cli(member, "schedule", "run-now", str(schedule["id"]))
    assert proc.returncode == 0, proc.stderr
    run = lab.json(member, "show", proc.stdout.strip())
    assert run["code"]["commit"] == head
    latest = lab.json(member, "schedule", "show", str(schedule["id"]))["firings"][0]
    assert latest["outcome"] == "submitted", latest
    lab.ok(member, "cancel", str(run["id"]))
    lab.ok(member, "schedule", "rm", str(schedule["id"]))
