"""Data staging against plain copies, on one machine, in one process.

A DVC repository with 2,000 small files and one large file is pushed to a local remote. Then:
  - first staging: the stager (python -m hpcops.data.stage) into an empty cache, which fetches
    with DVC, checks every object's md5 and makes the run's read-only copy; baseline: `cp -r` of
    the remote's objects (the same bytes, from the same remote);
  - cached staging: the same version again, for a new run (the cache has it all).
Targets: first staging at most 1.5x the copy; cached staging of 2,000 files under 1 s.
Each figure is the median of ROUNDS, the copy and the staging alternating, each after a sync (the
copies of earlier rounds are still being written back otherwise, which slows file creation).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpcops.data.versions import parse_dvc_file
from tests.benchmarks.common import write_result

ROUNDS = 3
SMALL_FILES = 2000
SMALL_BYTES = 4096
LARGE_BYTES = 256 * 1024 * 1024
IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@lab",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@lab",
    "DVC_NO_ANALYTICS": "1",
}


def sh(cwd: Path, *argv: str) -> str:
    env = {**os.environ, **IDENTITY}
    return subprocess.run(
        argv, cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(root: Path, large_bytes: int) -> tuple[Path, Path, str, str]:
    """(mirror, remote, commit, md5): a pushed data set, and a mirror holding the commit."""
    root.mkdir()
    repo, remote, mirror = root / "repo", root / "remote", root / "mirror.git"
    repo.mkdir()
    remote.mkdir()
    dvc = str(Path(sys.executable).parent / "dvc")
    sh(repo, "git", "init", "--quiet")
    sh(repo, dvc, "init", "--quiet")
    sh(repo, dvc, "remote", "add", "--default", "store", str(remote))
    ds = repo / "data" / "ds"
    (ds / "small").mkdir(parents=True)
    for i in range(SMALL_FILES):
        (ds / "small" / f"{i:05d}.bin").write_bytes(os.urandom(SMALL_BYTES))
    if large_bytes:
        with (ds / "large.bin").open("wb") as f:
            for _ in range(large_bytes // (1 << 20)):
                f.write(os.urandom(1 << 20))
    sh(repo, dvc, "add", "--quiet", "data/ds")
    sh(repo, "git", "add", ".")
    sh(repo, "git", "commit", "--quiet", "-m", "data")
    sh(repo, dvc, "push", "--quiet")
    sh(root, "git", "init", "--quiet", "--bare", str(mirror))
    commit = sh(repo, "git", "rev-parse", "HEAD")
    sh(mirror, "git", "fetch", "--quiet", str(repo), f"HEAD:refs/hpcops/c/{commit}")
    md5, _, _ = parse_dvc_file((repo / "data" / "ds.dvc").read_text(), "data/ds.dvc")
    return mirror, remote, commit, md5


def stage(
    work: Path, cache: Path, mirror: Path, commit: str, md5: str, dest: Path
) -> tuple[float, dict[str, float]]:
    """Wall time of the stager, and its own phase timings (fetch_s, verify_s, view_s)."""
    plan = {
        "cache": str(cache),
        "mirror": str(mirror),
        "progress": str(work / "progress.json"),
        "targets": [
            {
                "path": "data/ds",
                "repo": "bench",
                "rev": commit,
                "md5": md5,
                "size": None,
                "nfiles": SMALL_FILES + 1,
                "dest": str(dest),
                "env": "HPCOPS_DATA_DS",
            }
        ],
    }
    plan_path = work / f"plan-{dest.name}.json"
    plan_path.write_text(json.dumps(plan))
    os.sync()  # earlier writes flushed: the disk's writeback must not slow one side only
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hpcops.data.stage", str(plan_path)],
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    state = json.loads((work / "progress.json").read_text())["targets"]["data/ds"]
    phases = {k: state[k] for k in ("fetch_s", "verify_s", "view_s") if k in state}
    return wall, phases


def copy(remote: Path, dest: Path) -> float:
    os.sync()
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(remote), str(dest)], check=True)
    return time.perf_counter() - started


def measure(root: Path, large_bytes: int) -> dict[str, object]:
    mirror, remote, commit, md5 = make_repo(root, large_bytes)
    first, baseline, cached = [], [], []
    phases: list[dict[str, float]] = []
    for r in range(ROUNDS):
        work = root / f"round-{r}"
        work.mkdir()
        baseline.append(copy(remote, work / "cp"))
        cache = work / "cache"
        wall, phase = stage(work, cache, mirror, commit, md5, work / "view-1")
        first.append(wall)
        phases.append(phase)
        cached.append(stage(work, cache, mirror, commit, md5, work / "view-2")[0])
        shutil.rmtree(work)
    first_s, copy_s = statistics.median(first), statistics.median(baseline)
    return {
        "files": SMALL_FILES + (1 if large_bytes else 0),
        "bytes": SMALL_FILES * SMALL_BYTES + large_bytes,
        "first_staging_median_s": round(first_s, 3),
        "cp_r_median_s": round(copy_s, 3),
        "ratio_first_staging_to_cp": round(first_s / copy_s, 2),
        "cached_staging_median_s": round(statistics.median(cached), 3),
        "first_staging_phases_s": phases,
        "samples": {
            "first_s": [round(x, 3) for x in first],
            "cp_s": [round(x, 3) for x in baseline],
            "cached_s": [round(x, 3) for x in cached],
        },
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hpcops-bench-staging-", dir="/tmp") as tmp:
        root = Path(tmp)
        small = measure(root / "small", 0)
        large = measure(root / "large", LARGE_BYTES)
    write_result(
        "staging",
        {
            "small_files_only": small,
            "with_a_large_file": large,
            "targets": "first staging <= 1.5x cp -r; cached staging of 2,000 files < 1 s",
        },
    )


if __name__ == "__main__":
    main()
