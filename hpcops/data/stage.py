"""The stager: `python -m hpcops.data.stage PLAN.json`, run by the job (or its staging job).

For each target of the plan: under the version's lock, fetch with DVC what the lab's cache lacks
(DVC skips what is there, so a new version fetches only its changed files), check every new
object against its md5, then give the run its read-only view. Progress goes to stderr and, as
JSON, to the plan's progress file, which `hpcops show` reads.

Exit 0 when every target is staged, 1 with the reason (DVC's own words) otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcops.code.git import GitError, git
from hpcops.data.cache import CacheError, ContentCache, Entry
from hpcops.data.versions import DataVersion

PROGRESS_EVERY_S = 1.0


@dataclass
class Progress:
    """What the progress file says: one object per target, rewritten atomically."""

    path: Path | None
    token: str | None = None  # the submission attempt this staging belongs to
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    _last_print: float = 0.0

    def update_file(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        state = {"token": self.token, "targets": self.targets, "error": self.error}
        tmp.write_text(json.dumps({**state, "at": time.time()}))
        tmp.replace(self.path)

    def fail(self, error: str) -> None:
        self.error = error
        for state in self.targets.values():
            if state.get("phase") != "done":
                state["phase"] = "failed"
        self.update_file()

    def update(self, target: str, **fields: Any) -> None:
        self.targets.setdefault(target, {}).update(fields)
        self.update_file()
        now = time.monotonic()
        if fields.get("phase") != "fetching" or now - self._last_print >= 5:
            self._last_print = now
            print(f"hpcops staging {target}: {_describe(self.targets[target])}", file=sys.stderr)


def stage(plan: dict[str, Any], progress: Progress) -> None:
    cache = ContentCache(Path(plan["cache"]))
    cache.ensure()
    with cache.in_use():
        _stage_targets(plan, cache, progress)


def _stage_targets(plan: dict[str, Any], cache: ContentCache, progress: Progress) -> None:
    for item in plan["targets"]:
        version = DataVersion.from_json(item)
        started = time.monotonic()
        with cache.lock(version.md5):
            fetched = _fetch_missing(cache, version, Path(plan["mirror"]), progress)
        progress.update(version.path, phase="copying", files_done=0)

        def copied(done: int, total: int, target: str = version.path) -> None:
            progress.update(target, files_done=done, files_total=total)

        view_started = time.monotonic()
        files = cache.make_view(version.md5, Path(version.dest), copied)
        progress.update(
            version.path,
            phase="done",
            files_total=files,
            files_done=files,
            seconds=round(time.monotonic() - started, 3),
            view_s=round(time.monotonic() - view_started, 3),
            **fetched,
        )


def _fetch_missing(
    cache: ContentCache, version: DataVersion, mirror: Path, progress: Progress
) -> dict[str, float]:
    missing = cache.missing(version.md5)
    if missing == [] and cache.is_verified(version.md5):
        progress.update(version.path, phase="cached", fetched_files=0, fetched_bytes=0)
        return {"fetched_files": 0, "fetched_bytes": 0}
    if missing == []:
        # Complete but never verified (a stager was killed before its check): check it now.
        _verify(cache, version, _present(cache, version))
        cache.mark_verified(version.md5)
        return {"fetched_files": 0, "fetched_bytes": 0}
    # What the cache holds before: of this version if its manifest is known, else everything
    # (a version never seen; its fetch costs far more than listing the cache).
    before = _present(cache, version) if missing is not None else cache.all_objects()
    total_files = version.nfiles or (len(missing) if missing else 0)
    progress.update(version.path, phase="fetching", files_total=total_files, files_done=0)
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(cache, version, before, progress, stop), daemon=True
    )
    watcher.start()
    started = time.monotonic()
    try:
        error = _dvc_fetch(version, mirror, cache.root)
    finally:
        stop.set()
        watcher.join()
    fetch_s = time.monotonic() - started
    present = _present(cache, version)
    new = present - before
    started = time.monotonic()
    # Every object of the version, not just the new ones: objects it shares with another
    # version may have come from a stager killed before its own check.
    _verify(cache, version, present)
    verify_s = time.monotonic() - started
    still = cache.missing(version.md5)
    if still is None or still:
        count = "its manifest" if still is None else f"{len(still)} file(s)"
        raise CacheError(f"DVC could not fetch {count} of {version.path}: {error or 'no reason'}")
    cache.mark_verified(version.md5)
    fetched_bytes = cache.size_of([Entry("", md5) for md5 in new])
    return {
        "fetched_files": len(new),
        "fetched_bytes": fetched_bytes,
        "fetch_s": round(fetch_s, 3),
        "verify_s": round(verify_s, 3),
    }


def _verify(cache: ContentCache, version: DataVersion, objects: set[str]) -> None:
    bad = cache.verify(objects)
    if bad:
        raise CacheError(
            f"{len(bad)} object(s) DVC fetched for {version.path} do not match their md5 "
            f"(first: {bad[0]}): the remote's copy is corrupt. They were removed from the "
            "cache; repair the remote (dvc push from a good copy) and submit again"
        )


def _present(cache: ContentCache, version: DataVersion) -> set[str]:
    entries = cache.entries(version.md5)
    names = {e.md5 for e in entries or [] if cache.has(e.md5)}
    if version.is_dir and entries is not None:
        names.add(version.md5)
    return names


def _watch(
    cache: ContentCache,
    version: DataVersion,
    before: set[str],
    progress: Progress,
    stop: threading.Event,
) -> None:
    while not stop.wait(PROGRESS_EVERY_S):
        try:
            new = _present(cache, version) - before
            size = cache.size_of([Entry("", md5) for md5 in new])
        except CacheError:
            continue  # the manifest is being written
        progress.update(version.path, files_done=len(new), bytes_done=size)


def _dvc_fetch(version: DataVersion, mirror: Path, cache_root: Path) -> str:
    """Run `dvc fetch` for one target in a throw-away workspace holding just the repository's
    DVC config and the target's .dvc file, at the run's commit. Returns DVC's error, if any."""
    with tempfile.TemporaryDirectory(prefix="hpcops-stage-", dir=cache_root) as tmp:
        workspace = Path(tmp)
        _extract(mirror, version.rev, [".dvc/config", f"{version.path}.dvc"], workspace)
        (workspace / ".dvc").mkdir(exist_ok=True)
        (workspace / ".dvc" / "config.local").write_text(
            f"[core]\n    no_scm = true\n    analytics = false\n[cache]\n    dir = {cache_root}\n"
        )
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "LC_ALL": "C"}
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", "fetch", "--quiet", f"{version.path}.dvc"],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return ""
        lines = [line for line in str(proc.stderr).splitlines() if line.strip()]
        return " / ".join(lines[-4:]) or f"dvc fetch exited {proc.returncode}"


def _extract(mirror: Path, commit: str, paths: list[str], into: Path) -> None:
    """Those of these small files that exist at the commit, written under `into`. The paths
    are ours (validated spec paths), so nothing can land outside `into`."""
    for path in paths:
        try:
            text = git(["-C", str(mirror), "cat-file", "blob", f"{commit}:{path}"])
        except GitError:
            continue
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def _describe(state: dict[str, Any]) -> str:
    phase = str(state.get("phase", ""))
    done, total = state.get("files_done"), state.get("files_total")
    text = phase
    if total:
        text += f" {done or 0}/{total} files"
    if state.get("bytes_done"):
        text += f", {state['bytes_done'] / 1048576:.1f} MiB"
    if phase == "done":
        text += f" (fetched {state.get('fetched_files', 0)} files in {state.get('seconds')} s)"
    return text


def main(argv: list[str], out: Callable[[str], None] = print) -> int:
    if len(argv) != 1:
        out("usage: python -m hpcops.data.stage PLAN.json")
        return 2
    plan = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    progress = Progress(
        Path(plan["progress"]) if plan.get("progress") else None, token=plan.get("token")
    )
    try:
        stage(plan, progress)
    except (CacheError, GitError, OSError, subprocess.CalledProcessError) as exc:
        progress.fail(str(exc))
        print(f"hpcops staging failed: {exc}", file=sys.stderr)
        _mark(plan, 1)
        return 1
    _mark(plan, 0)
    return 0


def _mark(plan: dict[str, Any], code: int) -> None:
    """The staged marker, "<code> <epoch>": the daemon reads it with the job's own markers, so
    it learns that staging ended without asking Slurm."""
    if plan.get("marker"):
        path = Path(plan["marker"])
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{code} {int(time.time())} {plan.get('token', '-')}\n")
        tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
