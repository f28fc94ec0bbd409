"""The lab's code mirror and data cache: `code_have` (before shipping code), `cache ls`,
`cache gc`."""

from __future__ import annotations

from typing import Any

from hpcops.access import authorize
from hpcops.api.handlers.base import Daemon, Handler, Request
from hpcops.api.params import CacheGcParams, CodeHaveParams, NoParams
from hpcops.api.views import version_view
from hpcops.code.git import GitError
from hpcops.data.cache import CacheError, ContentCache
from hpcops.data.gc import collect_garbage
from hpcops.data.usage import VersionUse, version_uses
from hpcops.errors import HpcopsError, InvalidInput


class CodeCacheHandlers:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def methods(self) -> dict[str, Handler]:
        return {
            "code_have": self.code_have,
            "cache_ls": self.cache_ls,
            "cache_gc": self.cache_gc,
        }

    def code_have(self, req: Request) -> dict[str, Any]:
        """Which of the submitter's commits the lab's mirror holds, and where to put a bundle."""
        authorize("submit", req.caller, req.role)
        commits = CodeHaveParams.parse(req.params).commits
        mirror = self.daemon.code_mirror
        try:
            have = mirror.have(commits)
        except GitError as exc:
            raise InvalidInput(f"the lab's code mirror is not usable: {exc}") from None
        return {"have": sorted(have), "incoming": str(mirror.incoming)}

    def cache_ls(self, req: Request) -> list[dict[str, Any]]:
        """The data versions the lab's runs used: size, last use, runs, whether in the cache."""
        authorize("read", req.caller, req.role)
        NoParams.parse(req.params)
        cache = self.daemon.data_cache
        uses = self._uses()
        return [_listed(cache, use) for use in sorted(uses.values(), key=lambda u: -u.last_used)]

    def cache_gc(self, req: Request) -> dict[str, Any]:
        """Remove versions no queued or active run needs: unused for long, or over a size."""
        authorize("cache", req.caller, req.role)
        params = CacheGcParams.parse(req.params)
        try:
            outcome = collect_garbage(
                self.daemon.data_cache,
                self._uses,
                older_than_s=params.older_than_s,
                max_bytes=params.max_size,
                grace_s=self.daemon.config.data.gc_grace_s,
                dry_run=params.dry_run,
            )
        except CacheError as exc:
            raise HpcopsError(str(exc)) from None
        plan = outcome.plan
        if not params.dry_run:
            self.daemon.audit(
                req.caller,
                req.role,
                "cache_gc",
                "data cache",
                allowed=True,
                after=f"removed {len(plan.remove)} versions, {outcome.files_removed} files, "
                f"{outcome.bytes_freed} bytes",
            )
        return {
            "removed": [
                {"md5": md5, "reason": plan.reasons[md5], "paths": sorted(outcome.uses[md5].paths)}
                for md5 in plan.remove
            ],
            "kept": len(plan.keep),
            "files_removed": outcome.files_removed,
            "bytes_freed": outcome.bytes_freed,
            "dry_run": params.dry_run,
        }

    def _uses(self) -> dict[str, VersionUse]:
        """Every data version the lab's runs used, read from the database now."""
        return version_uses(self.daemon.store.data_versions())


def _listed(cache: ContentCache, use: VersionUse) -> dict[str, Any]:
    """One version of `cache ls`. A manifest on scratch is a job's to spoil: the version it
    spoils is listed as bad, with why ("problem"), and the others as they are."""
    try:
        return version_view(use, cache.missing(use.md5))
    except CacheError as exc:
        return {**version_view(use, None), "in_cache": "bad", "problem": str(exc)}
