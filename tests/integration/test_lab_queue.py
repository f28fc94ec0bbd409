"""The lab's queue with real Unix users, the real daemon (as a service account) and real Slurm."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from lab import LEAD, MEMBERS, OUTSIDER, SERVICE, Lab, new_lab

M1, M2 = MEMBERS


@pytest.fixture
def lab(cluster: None) -> Iterator[Lab]:
    lab = new_lab({"quotas": {"lab": {"jobs": 0}}})  # nothing released until a test says so
    yield lab
    runs = lab.json(SERVICE, "ls", "--all") if (lab.home / "daemon.pid").exists() else []
    lab.stop()
    live = [r["slurm_job_id"] for r in runs if r["slurm_job_id"] and not r["ended_at"]]
    if live:
        subprocess.run(["scancel", *live], check=False)


def _audit(lab: Lab) -> list[dict[str, object]]:
    return lab.json(LEAD, "audit", "--limit", "500")  # type: ignore[no-any-return]


def test_an_outsider_cannot_even_connect(lab: Lab) -> None:
    proc = lab.cli(OUTSIDER, "ls")
    assert proc.returncode == 5, proc.stderr
    assert "not allowed to connect" in proc.stderr
    assert lab.cli(OUTSIDER, "submit", lab.spec(OUTSIDER, "x", "true")).returncode == 5


def test_members_own_their_runs_leads_rule_all_and_refusals_are_audited(lab: Lab) -> None:
    run = lab.submit(M1, "mine", "true")
    assert lab.json(M1, "show", str(run))["owner"] == M1

    other = lab.cli(M2, "priority", str(run), "5")
    assert other.returncode == 5 and "lead" in other.stderr, other.stderr
    assert lab.cli(M2, "cancel", str(run)).returncode == 5
    assert lab.cli(M2, "hold", str(run)).returncode == 5
    too_high = lab.cli(M1, "priority", str(run), "500")
    assert too_high.returncode == 5 and "member range -10 to 10" in too_high.stderr
    high_spec = lab.cli(M1, "submit", lab.spec(M1, "greedy", "true", priority=50))
    assert high_spec.returncode == 5
    assert lab.cli(M1, "top", str(run)).returncode == 5
    assert lab.cli(M1, "quota", "set", "lab", "gpus", "8").returncode == 5

    assert "priority 0 -> 3" in lab.ok(M1, "priority", str(run), "3")
    assert "priority 3 -> 500" in lab.ok(LEAD, "priority", str(run), "500")
    lab.ok(LEAD, "hold", str(run))
    why = lab.json(M1, "why", str(run))["why"]
    assert why == f"held by lead {LEAD}", why
    undo = lab.cli(M1, "release", str(run))
    assert undo.returncode == 5 and f"held by {LEAD}" in undo.stderr, undo.stderr
    reset = lab.cli(M1, "priority", str(run), "0")
    assert reset.returncode == 5 and "set by a group lead" in reset.stderr, reset.stderr
    lab.ok(LEAD, "release", str(run))
    lab.ok(LEAD, "cancel", str(run))
    assert lab.json(M1, "show", str(run))["state"] == "CANCELLED"

    entries = _audit(lab)
    refused = [e for e in entries if not e["allowed"]]
    assert {(e["actor"], e["action"]) for e in refused} >= {
        (M2, "priority"),
        (M2, "cancel"),
        (M2, "hold"),
        (M1, "priority"),
        (M1, "submit"),
        (M1, "top"),
        (M1, "release"),
        (M1, "quota_set"),
    }
    changes = [(e["actor"], e["action"], e["before"], e["after"]) for e in entries if e["allowed"]]
    assert (LEAD, "priority", "3", "500") in changes
    assert (M1, "priority", "0", "3") in changes
    history = lab.json(M1, "history", str(run))
    assert any(e["actor"] == LEAD and "3 -> 500" in e["reason"] for e in history)


def _started_order(lab: Lab, runs: list[int]) -> list[int]:
    shown = [lab.json(SERVICE, "show", str(r)) for r in runs]
    return [s["id"] for s in sorted(shown, key=lambda s: (s["submitted_at"], s["slurm_job_id"]))]


# Exclusive: a lab-wide jobs quota of 1, and every job in the lab's Slurm account counts
# against it (other tests' jobs too, as a member's job submitted by hand would).
@pytest.mark.exclusive
def test_release_order_priority_then_fair_share_then_time_and_top(lab: Lab) -> None:
    # M1 has used the cluster recently; M2 has not.
    lab.stop()
    lab.config["quotas"] = {"lab": {"jobs": 1}}
    lab.config["fair_share"] = {"refresh_s": 10, "cpu_hour_weight": 1.0}
    lab.start()
    warm = lab.submit(M1, "warmup", "sleep 3", resources={"cpus_per_task": 4})
    lab.wait(lambda: lab.json(M1, "show", str(warm))["state"] == "COMPLETED", 60, "warm-up")
    lab.wait(
        lambda: lab.json(M1, "quota", "show")["fair_share_usage"].get(M1, 0) > 0,
        40,
        "usage of the warm-up job",
    )
    lab.ok(LEAD, "quota", "set", "lab", "jobs", "0")

    a = lab.submit(M1, "a", "sleep 1")  # M1, priority 0, first
    b = lab.submit(M2, "b", "sleep 1")  # M2, priority 0: less usage than M1
    c = lab.submit(M1, "c", "sleep 1", priority=5)  # higher priority beats fair share
    d = lab.submit(M2, "d", "sleep 1")  # M2 again, later than b
    e = lab.submit(M1, "e", "sleep 1")  # lowest place, until the lead moves it
    expected = [c, b, d, a, e]
    lab.wait(
        lambda: [r["id"] for r in lab.json(M1, "ls") if r["state"] == "QUEUED"] == expected,
        10,
        "the queue in release order",
    )
    why_a = lab.json(M2, "why", str(a))["why"]
    assert "more than the lab quota of 0" in why_a, why_a

    assert "goes next" in lab.ok(LEAD, "top", str(e))
    expected = [e, c, b, d, a]
    lab.wait(
        lambda: [r["id"] for r in lab.json(M1, "ls") if r["state"] == "QUEUED"] == expected,
        10,
        "the queue after top",
    )

    lab.ok(LEAD, "quota", "set", "lab", "jobs", "1")
    lab.wait(
        lambda: all(lab.json(M1, "show", str(r))["state"] == "COMPLETED" for r in expected),
        180,
        "all five complete, one at a time",
    )
    assert _started_order(lab, expected) == expected


def _lab_gpus_in_slurm() -> int:
    out = subprocess.run(
        ["squeue", "--noheader", "--account=lab", "--format=%b"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    from hpcops.slurm.parse import parse_gpus

    return sum(parse_gpus(line) for line in out.splitlines())


# 30 times the quota of 4 GPUs, from two members at once: enough waves for the release to be
# tested under pressure, few enough to keep the suite short.
BURST_PER_MEMBER = 60


@pytest.mark.exclusive
def test_a_burst_of_120_never_exceeds_the_gpu_quota(lab: Lab) -> None:
    lab.stop()
    lab.config["quotas"] = {"lab": {"gpus": 4}}
    lab.config["max_active"] = 200
    lab.config["pending_window"] = 8
    lab.config["tracking"] = {"enabled": False}  # the quota is under test, not MLflow's load
    lab.start()
    specs = {
        m: [
            lab.spec(m, f"burst{i}", "sleep 0.5", resources={"partition": "gpu", "gpus": 1})
            for i in range(BURST_PER_MEMBER)
        ]
        for m in MEMBERS
    }
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _lab_gpus_in_slurm())
            time.sleep(0.3)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        threads = [threading.Thread(target=lab.ok, args=(m, "submit", *specs[m])) for m in MEMBERS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runs = lab.json(SERVICE, "ls", "--all")
        assert len(runs) == BURST_PER_MEMBER * len(MEMBERS)
        lab.wait(
            lambda: all(r["state"] == "COMPLETED" for r in lab.json(SERVICE, "ls", "--all")),
            600,
            "every run of the burst completes",
        )
    finally:
        stop.set()
        watcher.join()
    assert 1 <= peak <= 4, f"Slurm saw {peak} of the lab's GPUs in use at once"


def test_a_job_submitted_by_hand_counts_against_the_quota(lab: Lab) -> None:
    lab.ok(LEAD, "quota", "set", "lab", "jobs", "none")
    lab.ok(LEAD, "quota", "set", "lab", "gpus", "4")
    hand = subprocess.run(
        [
            "runuser",
            "-u",
            M1,
            "--",
            "sbatch",
            "--parsable",
            "-A",
            "lab",
            "-p",
            "gpu",
            "--gres=gpu:2",
            "-J",
            "by-hand",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 120",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    ).stdout.strip()
    try:
        time.sleep(5)  # the daemon's next poll sees it
        runs = [
            lab.submit(M2, f"gpu{i}", "sleep 60", resources={"partition": "gpu", "gpus": 1})
            for i in range(4)
        ]
        lab.wait(
            lambda: (
                sum(lab.json(M2, "show", str(r))["slurm_job_id"] is not None for r in runs) == 2
            ),
            30,
            "two runs released",
        )
        time.sleep(3)
        assert sum(lab.json(M2, "show", str(r))["slurm_job_id"] is not None for r in runs) == 2
        waiting = next(r for r in runs if lab.json(M2, "show", str(r))["state"] == "QUEUED")
        why = lab.json(M2, "why", str(waiting))["why"]
        assert "lab GPU quota full: 4/4" in why and f"{M1} (2)" in why, why
        assert _lab_gpus_in_slurm() == 4
    finally:
        subprocess.run(["scancel", hand], check=False)
    lab.wait(
        lambda: sum(lab.json(M2, "show", str(r))["slurm_job_id"] is not None for r in runs) == 4,
        60,
        "the rest released once the hand job left",
    )


@pytest.mark.exclusive
def test_a_slurm_association_limit_means_wait_then_go(lab: Lab) -> None:
    lab.ok(LEAD, "quota", "set", "lab", "jobs", "none")
    sacctmgr = [
        "sacctmgr",
        "-i",
        "modify",
        "user",
        "where",
        f"name={SERVICE}",
        "account=lab",
        "set",
    ]
    subprocess.run([*sacctmgr, "MaxSubmitJobs=2"], check=True, capture_output=True)
    try:
        runs = [lab.submit(M1, f"limited{i}", "sleep 4") for i in range(4)]
        lab.wait(
            lambda: any(
                "Slurm limit" in (lab.json(M1, "show", str(r))["reason"] or "") for r in runs
            ),
            30,
            "a run waiting on Slurm's limit",
        )
        states = [lab.json(M1, "show", str(r))["state"] for r in runs]
        assert "FAILED" not in states
        lab.wait(
            lambda: all(lab.json(M1, "show", str(r))["state"] == "COMPLETED" for r in runs),
            180,
            "all four complete once room frees up",
        )
    finally:
        subprocess.run([*sacctmgr, "MaxSubmitJobs=-1"], check=True, capture_output=True)
