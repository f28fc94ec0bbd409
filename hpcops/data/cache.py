"""The lab's content-addressed data cache on scratch, in DVC's own layout (files/md5/ab/cdef...),
so DVC fetches straight into it and skips whatever is already there.

A run never reads the cache itself: it gets a view, a read-only copy of exactly its version
(a reflink where the filesystem has them, else a copy). Hardlinks would be cheaper, but a job
running as the cache's owner can chmod a hardlinked file and write through it, changing the data
of every other run (docs/notes-stack.md). A copy it may change is its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

from hpcops.data.versions import FILE_MD5_RE, MD5_RE
from hpcops.errors import HpcopsError
from hpcops.transport.beneath import UnsafeFile, open_beneath, read_beneath

# A manifest lists every file of a version (about 100 bytes each): 64 MiB is ~600,000 files.
MANIFEST_MAX_BYTES = 64 * 1024 * 1024
_FICLONE = 0x40049409  # ioctl: share the blocks (btrfs, XFS); ext4 says EOPNOTSUPP
_CHUNK = 1024 * 1024
_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CacheError(HpcopsError):
    """The cache cannot give this version: corrupt or missing objects. Message for the user."""


@dataclass(frozen=True)
class Entry:
    relpath: str  # "" for a single file
    md5: str


class ContentCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "files" / "md5"

    def ensure(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)

    def object_path(self, md5: str) -> Path:
        # A manifest on scratch names these: a name that is not an md5 could point anywhere
        # (".." / "/etc/..."), and the daemon reads, copies and deletes by this path.
        if not MD5_RE.fullmatch(md5):
            raise CacheError(f"{md5[:80]!r} is not a DVC md5 (32 hex digits, optionally .dir)")
        return self.objects / md5[:2] / md5[2:]

    def has(self, md5: str) -> bool:
        return self.object_path(md5).is_file()

    # --- a version's objects ----------------------------------------------------------------

    def entries(self, md5: str) -> list[Entry] | None:
        """The objects of a version; None while a directory's manifest is not in the cache."""
        if not md5.endswith(".dir"):
            return [Entry("", md5)]
        manifest = self.object_path(md5).relative_to(self.root)
        try:
            # The cache is on scratch, where jobs write: no links, and a bounded read.
            chunk = read_beneath(self.root, manifest, 0, MANIFEST_MAX_BYTES + 1)
            if len(chunk.data) > MANIFEST_MAX_BYTES:
                raise CacheError(f"the manifest {md5} is over {MANIFEST_MAX_BYTES} bytes")
            items = json.loads(chunk.data)
        except FileNotFoundError:
            return None
        # RecursionError: "[" * 100000 nests past json's limit. It is no ValueError, so it would
        # pass every `except CacheError` and fail gc and `cache ls` for the whole lab. Caught as
        # protocol.decode does: rundir._nesting's pre-scan costs seconds on a 64 MiB manifest.
        except (OSError, ValueError, RecursionError, UnsafeFile) as exc:
            raise CacheError(f"the manifest {md5} in the cache is unreadable: {exc}") from None
        if not isinstance(items, list):
            raise CacheError(f"the manifest {md5} is not a list of files")
        entries = []
        for item in items:
            relpath = item.get("relpath") if isinstance(item, dict) else None
            obj = item.get("md5") if isinstance(item, dict) else None
            if (
                not isinstance(relpath, str)
                or not _safe_relpath(relpath)
                or not isinstance(obj, str)
                or not FILE_MD5_RE.fullmatch(obj)
            ):
                raise CacheError(f"the manifest {md5} names a bad entry: {str(item)[:200]}")
            entries.append(Entry(relpath, obj))
        return entries

    def missing(self, md5: str) -> list[Entry] | None:
        """What the cache lacks of a version ([] when complete; None: the manifest itself)."""
        entries = self.entries(md5)
        if entries is None:
            return None
        return [e for e in entries if not self.has(e.md5)]

    def size_of(self, entries: list[Entry]) -> int:
        total = 0
        for e in entries:
            with contextlib.suppress(FileNotFoundError):
                total += self.object_path(e.md5).stat().st_size
        return total

    def verify(self, md5s: set[str]) -> list[str]:
        """Objects whose content does not hash to their name: removed, and returned."""
        bad = []
        for md5 in sorted(md5s):
            path = self.object_path(md5)
            try:
                actual = _md5_of(path)
            except FileNotFoundError:
                continue
            if actual != md5.removesuffix(".dir"):
                path.unlink(missing_ok=True)
                bad.append(md5)
        return bad

    @contextlib.contextmanager
    def lock(self, md5: str) -> Iterator[None]:
        """One stager per version at a time: the others wait, then find it complete."""
        with self._flock(self.root / "locks" / f"{md5}.lock", fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Held (shared) by every stager from its first look at the cache to its last copy: a
        gc, which needs it alone, never removes objects a stager has counted on."""
        with self._flock(self.root / "locks" / "gc.lock", fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def exclusive(self, wait_s: float) -> Iterator[None]:
        """For gc: no stager at work. CacheError if stagers keep it busy for `wait_s`."""
        deadline = time.monotonic() + wait_s
        path = self.root / "locks" / "gc.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise CacheError(
                            f"data is being staged (for {wait_s:.0f} s now); try gc again later"
                        ) from None
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)

    @staticmethod
    @contextlib.contextmanager
    def _flock(path: Path, how: int) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)

    # --- verified versions ------------------------------------------------------------------

    def is_verified(self, md5: str) -> bool:
        return (self.root / "verified" / md5).exists()

    def mark_verified(self, md5: str) -> None:
        """Every object of the version was hashed after it arrived: a stager killed between
        DVC's download and the check leaves a version complete but not verified."""
        (self.root / "verified").mkdir(exist_ok=True)
        (self.root / "verified" / md5).touch()

    # --- views ------------------------------------------------------------------------------

    def make_view(
        self, md5: str, dest: Path, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Copy a complete version to `dest` (replacing an earlier attempt's), read-only.
        Returns the number of files."""
        entries = self.entries(md5)
        if entries is None or self.missing(md5):
            raise CacheError(f"version {md5} is not complete in the cache")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # One stager per view at a time (Slurm may run a requeued job twice): then every
        # staging copy beside it is a killed stager's, and would stay there, up to a whole
        # dataset each, if the name were the pid's and no one removed it.
        with self._flock(dest.with_name(f".{dest.name}.staging.lock"), fcntl.LOCK_EX):
            for stale in _staging_copies(dest):
                _remove_tree(stale)
            return self._copy_view(md5, entries, dest, progress)

    def _copy_view(
        self,
        md5: str,
        entries: list[Entry],
        dest: Path,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        """Built beside `dest`, then renamed into place: the job never sees half a view."""
        tmp = dest.with_name(f".{dest.name}.staging")
        if not md5.endswith(".dir"):
            _clone(self.object_path(md5), tmp)
            tmp.chmod(0o444)
        else:
            tmp.mkdir()
            dirs = {tmp}
            for i, e in enumerate(entries, 1):
                target = tmp / e.relpath
                if target.parent not in dirs:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    dirs.update([target.parent, *target.parent.parents])
                _clone(self.object_path(e.md5), target)
                target.chmod(0o444)
                if progress is not None and (i % 200 == 0 or i == len(entries)):
                    progress(i, len(entries))
            for d in sorted(
                (d for d in dirs if tmp in (d, *d.parents)), key=lambda p: -len(p.parts)
            ):
                d.chmod(0o555)
        _remove_tree(dest)  # an earlier attempt's view
        tmp.rename(dest)
        return len(entries)

    # --- housekeeping -----------------------------------------------------------------------

    def total_size(self) -> int:
        total = 0
        for _, _, entry in self._object_files():
            with contextlib.suppress(FileNotFoundError):  # removed since the listing
                total += entry.stat(follow_symlinks=False).st_size
        return total

    def remove_except(self, keep: set[str], *, min_age_s: float = 3600.0) -> tuple[int, int]:
        """Delete every object not in `keep` (manifests included); (files, bytes) freed.

        Objects younger than `min_age_s` stay: a fetch in progress has not written its version's
        manifest yet, so nothing else says that they are needed."""
        files = freed = 0
        cutoff = time.time() - min_age_s
        verified = self._open_dir("verified")
        try:
            for shard_fd, md5, entry in self._object_files():
                name = md5[2:]
                if md5 in keep or name.startswith(".") or not MD5_RE.fullmatch(md5):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since the listing
                if info.st_mtime > cutoff:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if verified is not None:
                        os.unlink(md5, dir_fd=verified)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=shard_fd)
                    files += 1
                    freed += info.st_size
        finally:
            if verified is not None:
                os.close(verified)
        return files, freed

    def all_objects(self) -> set[str]:
        return {md5 for _, md5, _ in self._object_files()}

    def _open_dir(self, relative: str) -> int | None:
        """A handle on a directory of the cache reached without links; None if there is none."""
        try:
            return open_beneath(self.root, PurePath(relative), directory=True)
        except (FileNotFoundError, NotADirectoryError, UnsafeFile):
            return None

    def _object_files(self) -> Iterator[tuple[int, str, os.DirEntry[str]]]:
        """(its shard directory's handle, name, entry) of every object file, found without
        following a link: a job can make files/md5/ab a link to any directory, and gc deletes
        what it finds here. The handle is for unlinking: a shard swapped for a link after the
        listing is never the directory a file is removed from. `list_beneath` does not fit:
        it stops at a bound (a cache holds millions of objects) and gives paths, not handles."""
        top = self._open_dir("files/md5")
        if top is None:
            return
        try:
            with os.scandir(top) as shards:
                for shard in shards:
                    # DVC's shards are two characters: then an object's name is md5[2:]
                    if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                        continue
                    try:
                        shard_fd = os.open(shard.name, _DIR_NOFOLLOW, dir_fd=top)
                    except OSError:
                        continue  # swapped for a link, or removed, since the listing
                    try:
                        yield from self._files_in(shard_fd, shard.name)
                    finally:
                        os.close(shard_fd)
        finally:
            os.close(top)

    @staticmethod
    def _files_in(shard_fd: int, shard: str) -> Iterator[tuple[int, str, os.DirEntry[str]]]:
        # is_file from the directory's own listing: no stat per object (a cache of millions on
        # Lustre), except where a file system does not say a name's type.
        with os.scandir(shard_fd) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    yield shard_fd, shard + entry.name, entry

    def objects_of(self, md5: str) -> set[str]:
        """Every object a version uses (its manifest too), as far as the cache knows it. A bad
        manifest knows nothing: the version stages again from its remote when next needed."""
        try:
            entries = self.entries(md5)
        except CacheError:
            return set()
        names = {md5} if md5.endswith(".dir") else set()
        return names | {e.md5 for e in entries or []}


def _safe_relpath(relpath: str) -> bool:
    parts = relpath.split("/")
    return bool(relpath) and not relpath.startswith("/") and ".." not in parts and "" not in parts


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_reflinks_work: bool | None = None  # learnt on the first copy: ext4 has none, XFS/btrfs do


def _clone(source: Path, target: Path) -> None:
    """A reflink if the filesystem shares blocks, else a kernel-side copy (sendfile)."""
    global _reflinks_work
    if _reflinks_work is not False:
        with source.open("rb") as src, target.open("xb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
                _reflinks_work = True
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                    raise
                _reflinks_work = False
        target.unlink()
    shutil.copyfile(source, target)


def _staging_copies(dest: Path) -> list[Path]:
    """The staging copies of `dest` beside it: `.{name}.staging`, and `.{name}.staging-{pid}` as
    stagers before this one named them. Found by name, without following links."""
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.staging(?:-[0-9]+)?")
    with os.scandir(dest.parent) as entries:
        return [dest.parent / e.name for e in entries if pattern.fullmatch(e.name)]


def _remove_tree(path: Path) -> None:
    """Remove a view, read-only as it is."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_file() or path.is_symlink():
        path.unlink()
        return
    for dirpath, _, _ in os.walk(path):
        Path(dirpath).chmod(stat.S_IRWXU)
    shutil.rmtree(path)
