"""The daemon's side: one mirror of every commit the lab's runs use.

    <code root>/mirror.git      on the cluster's disk: a bare repository whose objects/ hold
                                every commit; jobs check out from them (an alternate)
    <code root>/incoming/       where submitters drop bundles (sticky, group-writable, not
                                listable)
    <home>/code-mirror/git      the git directory the daemon runs git in: its config and refs
                                (refs/hpcops/c/<sha> keeps each run's commit alive), with
                                objects/ a link to the shared ones
    <home>/code-mirror/work     bundles being taken in

Jobs run as the daemon's account and can write everything on the cluster's disk, the shared
repository's config included. git runs commands that a repository's config names (hooks,
core.alternateRefsCommand, a remote's uploadpack, a promisor remote's fetch), so the daemon never
runs git with a config a job can write: its git directory is in its home, on the login node's
own disk, and it reads no global config either (~/.gitconfig is on storage the jobs share). The
shared objects stay what jobs can spoil (a run's own checkout), never a way onto the login node.
git checks every object it takes in (transfer.fsckObjects, on a fetch from a scratch
repository: see receive_bundle), so a member's bundle can add commits but never change
another run's.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcops.code.git import DAEMON_GIT_ENV, GitError, git
from hpcops.errors import HpcopsError
from hpcops.names import FULL_COMMIT_RE as FULL_SHA_RE

log = logging.getLogger(__name__)

BUNDLE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.bundle")
_RECEIVING = r"\.receiving-[0-9a-f]{16}\.bundle"
_WORK_LEFTOVER_RE = re.compile(rf"{_RECEIVING}|take-[a-z0-9_]{{8}}")
# What a daemon killed mid-receive left in the code root before the git directory moved home.
_OLD_LAYOUT_LEFTOVER_RE = re.compile(rf"{_RECEIVING}|tmp[a-z0-9_]{{8}}")
MAX_PACKED_REFS_BYTES = 64 * 1024 * 1024
STALE_UPLOAD_S = 24 * 3600  # a bundle left behind by a submit that failed after uploading
MAX_HAVE_QUERY = 512
SHIP_REF = "refs/hpcops/ship"  # the one ref of every bundle hpcops makes


class MirrorError(HpcopsError):
    """A bundle or a fetch the mirror could not take; the message is for the submitter."""


@dataclass(frozen=True)
class Shipment:
    """What a submitter's client did about one spec's code (the submit request's `code`)."""

    bundle: str | None = None  # a file it put in incoming/, when the mirror lacked the commit
    checkout: str | None = None  # the snapshot commit of a dirty tree, else the spec's commit
    dirty: bool = False


@dataclass(frozen=True)
class Received:
    commit: str
    bundle_bytes: int


def mirror_path(root: Path) -> Path:
    """The shared bare repository under the lab's code root (config code.mirror_root)."""
    return root / "mirror.git"


class CodeMirror:
    def __init__(
        self,
        root: Path,
        *,
        state: Path,
        group: str | None = None,
        fetch_timeout_s: float = 300.0,
    ):
        self.root = root
        self.shared = mirror_path(root)  # the objects jobs check out from
        self.incoming = root / "incoming"
        self.state = state  # the daemon's own (HomePaths.mirror_state)
        self.git_dir = state / "git"  # where the daemon's git runs: its config, its refs
        self._work = state / "work"
        self.group = group
        self.fetch_timeout_s = fetch_timeout_s
        # Ref updates are quick and local: one at a time, so two takes of the same commit never
        # race for its ref's lock. A fetch over the network holds only its own repository's
        # lock: one member's unreachable URL never delays another's submission.
        self._lock = threading.Lock()
        self._repo_locks: dict[str, threading.Lock] = {}

    def _git(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        stdin: str | None = None,
    ) -> str:
        """git in the daemon's git directory (see the module's doc)."""
        return _git_in(self.git_dir, args, env=env, timeout_s=timeout_s, stdin=stdin)

    # --- set-up ---------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the shared repository, the incoming folder and the daemon's git directory if
        needed, and drop stale uploads.

        The code root is on scratch, where a job can put a link in place of any folder: each
        is opened without following one, and changed through that handle (a link to the
        daemon's home must never get the lab's group, nor the stale sweep)."""
        self.root.mkdir(parents=True, exist_ok=True)
        root_fd = _open_dir(self.root)
        try:
            incoming_fd = _open_dir("incoming", dir_fd=root_fd, create=True)
            try:
                if self.group is not None:
                    gid = grp.getgrnam(self.group).gr_gid
                    # Members pass through root and drop files into incoming, without seeing
                    # others'.
                    for fd, mode in ((root_fd, 0o750), (incoming_fd, 0o1730)):
                        os.fchown(fd, -1, gid)
                        os.fchmod(fd, mode)
                else:
                    os.fchmod(incoming_fd, 0o700)
                _remove_old(incoming_fd, BUNDLE_NAME_RE, self.incoming)
            finally:
                os.close(incoming_fd)
            os.close(_open_dir("mirror.git", dir_fd=root_fd, create=True))
            # Before the git directory moved home: copies and unbundle folders of a daemon
            # killed mid-receive.
            _remove_old(root_fd, _OLD_LAYOUT_LEFTOVER_RE, self.root)
        finally:
            os.close(root_fd)
        if not (self.shared / "HEAD").exists():
            _init_bare(self.shared)
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._work.mkdir(mode=0o700, exist_ok=True)
        for entry in self._work.glob("git-*"):
            shutil.rmtree(entry, ignore_errors=True)  # a git directory a crash left half-made
        work_fd = _open_dir(self._work)
        try:
            _remove_old(work_fd, _WORK_LEFTOVER_RE, self._work)
        finally:
            os.close(work_fd)
        if not (self.git_dir / "HEAD").exists():
            self._make_git_dir()
        elif not _links_to(self.git_dir / "objects", self.shared / "objects"):
            self._point_objects(self.git_dir)  # code.mirror_root changed

    def _make_git_dir(self) -> None:
        """The daemon's git directory, made aside and renamed into place: a crash leaves none
        or a whole one."""
        building = Path(tempfile.mkdtemp(prefix="git-", dir=self._work))
        _init_bare(building)
        for key, value in (
            ("transfer.fsckObjects", "true"),
            # Unreachable objects of a failed fetch may go, never a commit a run needs: each
            # has a ref. Automatic gc would run inside a submit request; gc is the admin's.
            ("gc.auto", "0"),
        ):
            _git_in(building, ["config", key, value])
        shutil.rmtree(building / "objects")
        self._point_objects(building)
        building.rename(self.git_dir)

    def _point_objects(self, git_dir: Path) -> None:
        """Link `git_dir`'s objects to the shared ones (replacing the link there was), and take
        over the refs a mirror of an older hpcops kept in the shared repository: they keep
        runs' commits alive through an admin's gc."""
        link = git_dir / f"objects.{secrets.token_hex(4)}"
        link.symlink_to(self.shared / "objects")
        link.replace(git_dir / "objects")
        adopted = _shared_ref_commits(self.shared)
        if adopted:
            held = _commits_held(git_dir, adopted)
            lines = "".join(f"update refs/hpcops/c/{c} {c}\n" for c in sorted(held))
            _git_in(git_dir, ["update-ref", "--stdin"], stdin=lines)
            log.info("code mirror: took over %d commit ref(s) from %s", len(held), self.shared)

    # --- questions ------------------------------------------------------------------------

    def have(self, commits: Iterable[str]) -> set[str]:
        """Which of these full commit ids the mirror holds."""
        return _commits_held(self.git_dir, commits)

    def parent_of(self, commit: str) -> str | None:
        try:
            return self._git(["rev-parse", "--verify", f"{commit}^1"]).strip()
        except GitError:
            return None

    # --- taking code in -------------------------------------------------------------------

    def receive_bundle(self, name: str, uid: int, expected: str | None = None) -> Received:
        """Fetch a submitter's bundle from incoming/ into the mirror, then delete it.

        The file must be a regular file owned by the caller: nobody can make the daemon read a
        file they could not read themselves, or take in someone else's upload."""
        if not BUNDLE_NAME_RE.fullmatch(name):
            raise MirrorError(f"bundle name {name!r} is not one hpcops makes")
        path = self.incoming / name
        try:
            owner = path.lstat().st_uid
        except FileNotFoundError:
            raise MirrorError(f"no uploaded bundle {name!r} in {self.incoming}") from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if owner == uid:  # the caller's own broken upload (a symlink, say): drop it
                path.unlink(missing_ok=True)
            raise MirrorError(f"cannot open the uploaded bundle {name!r}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as upload:
            info = os.fstat(upload.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
                raise MirrorError(f"{path} is not a bundle uploaded by you")  # it stays theirs
            # git reads a path, and the uploader could swap what the path names: copy what was
            # opened and checked into a file of the daemon's own, and fetch from that.
            private = self._work / f".receiving-{secrets.token_hex(8)}.bundle"
            with private.open("xb") as copy:
                shutil.copyfileobj(upload, copy, 1024 * 1024)
        path.unlink(missing_ok=True)
        try:
            with self._lock, tempfile.TemporaryDirectory(prefix="take-", dir=self._work) as tmp:
                heads = self._git(["bundle", "list-heads", str(private)])
                commit, ref = _single_head(heads)
                if expected is not None and commit != expected:
                    raise MirrorError(f"the bundle holds commit {commit}, not {expected}")
                # git checks objects fetched from a repository (index-pack --strict with
                # transfer.fsckObjects) but not those fetched from a bundle file: unbundle
                # into a scratch repository that borrows the mirror's objects, then fetch
                # from it, so every new object is checked before the mirror takes it. Both are
                # the daemon's own: no job can plant config in them.
                scratch = Path(tmp) / "unbundle.git"
                _init_bare(scratch)
                (scratch / "objects" / "info" / "alternates").write_text(
                    f"{self.shared / 'objects'}\n"
                )
                _git_in(
                    scratch,
                    ["fetch", "--quiet", str(private), f"{ref}:{ref}"],
                    timeout_s=self.fetch_timeout_s,
                )
                self._git(
                    [
                        "fetch",
                        "--quiet",
                        "--no-tags",
                        f"file://{scratch}",
                        f"{ref}:refs/hpcops/c/{commit}",
                    ],
                    timeout_s=self.fetch_timeout_s,
                )
            return Received(commit, info.st_size)
        except GitError as exc:
            raise MirrorError(f"the mirror refused the bundle: {exc}") from None
        finally:
            private.unlink(missing_ok=True)

    def fetch_url(self, url: str, rev: str) -> str:
        """Fetch `rev` (a branch, tag or full commit id) from `url`; return its commit id.

        `url` may be a path on this machine to a member's own repository: git refuses to work
        in a repository another account owns ("dubious ownership"), so such a path is fetched
        over git's pack protocol (file://), which only reads it, with that one path marked
        safe for this one command."""
        scratch_ref = f"refs/hpcops/fetch/{secrets.token_hex(8)}"
        with self._repo_lock(url), _fetch_source(url) as (source, env):
            try:
                # Into a ref of its own, not FETCH_HEAD: fetches of other repositories run at
                # the same time and would overwrite each other's FETCH_HEAD.
                self._git(
                    [
                        "fetch",
                        "--quiet",
                        "--no-tags",
                        "--no-write-fetch-head",
                        source,
                        f"+{rev}:{scratch_ref}",
                    ],
                    timeout_s=self.fetch_timeout_s,
                    env=env,
                )
                commit = self._git(["rev-parse", "--verify", f"{scratch_ref}^{{commit}}"]).strip()
                with self._lock:
                    self._git(["update-ref", f"refs/hpcops/c/{commit}", commit])
            except GitError as exc:
                raise MirrorError(f"cannot fetch {rev!r} from {url}: {exc}") from None
            finally:
                with contextlib.suppress(GitError):
                    self._git(["update-ref", "-d", scratch_ref])
        return commit

    def _repo_lock(self, url: str) -> threading.Lock:
        with self._lock:
            return self._repo_locks.setdefault(url, threading.Lock())

    def keep(self, commit: str) -> None:
        """Make sure a commit the mirror holds (sent earlier) has its own ref."""
        with self._lock:
            self._git(["update-ref", f"refs/hpcops/c/{commit}", commit])


@contextlib.contextmanager
def _fetch_source(url: str) -> Iterator[tuple[str, dict[str, str] | None]]:
    """What to give `git fetch` for `url`, and the environment for it. A local repository
    owned by another account is read over file:// with a global config of one line that names
    it safe (git honours safe.directory only from protected config, not from -c)."""
    path = Path(url)
    if "://" in url or not path.is_absolute():
        yield url, None  # a URL, or scp-like host:path: git's own rules apply
        return
    try:
        owner = path.stat().st_uid
    except OSError:
        owner = os.geteuid()  # git says what is wrong with it
    if owner == os.geteuid():
        yield url, None
        return
    with tempfile.TemporaryDirectory(prefix="hpcops-git-") as tmp:
        config = Path(tmp) / "gitconfig"
        lines = "".join(f"\tdirectory = {p}\n" for p in (path, path / ".git"))
        config.write_text(f"[safe]\n{lines}", encoding="utf-8")
        yield path.as_uri(), {"GIT_CONFIG_GLOBAL": str(config)}


def _single_head(heads: str) -> tuple[str, str]:
    rows = [line.split(" ", 1) for line in heads.splitlines() if line.strip()]
    if (
        len(rows) != 1
        or len(rows[0]) != 2
        or not FULL_SHA_RE.fullmatch(rows[0][0])
        or rows[0][1] != SHIP_REF
    ):
        raise MirrorError("a bundle from hpcops holds exactly one commit; this one does not")
    return rows[0][0], rows[0][1]


def _init_bare(path: Path) -> None:
    """An empty bare repository: no template (a global init.templateDir could hand it a config
    that names a promisor remote), no global config."""
    git(["init", "--quiet", "--bare", "--template=", str(path)], env=DAEMON_GIT_ENV)


def _git_in(
    git_dir: Path,
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    stdin: str | None = None,
) -> str:
    """git in one of the daemon's own git directories, named as such (-C would search the
    folders above for a repository if the objects link were broken), with DAEMON_GIT_ENV. (A
    fetch of a member's repository names its one safe.directory in a global config of its own:
    _fetch_source.)"""
    return git(
        [f"--git-dir={git_dir}", *args],
        env={**DAEMON_GIT_ENV, **(env or {})},
        timeout_s=timeout_s,
        stdin=stdin,
    )


def _commits_held(git_dir: Path, commits: Iterable[str]) -> set[str]:
    wanted = [c for c in commits if FULL_SHA_RE.fullmatch(c)]
    if not wanted:
        return set()
    out = _git_in(
        git_dir,
        ["cat-file", "--batch-check=%(objectname) %(objecttype)"],
        stdin="".join(f"{c}\n" for c in wanted),
    )
    held = set()
    for line in out.splitlines():
        name, _, kind = line.partition(" ")
        if kind == "commit":
            held.add(name)
    return held


def _links_to(link: Path, target: Path) -> bool:
    try:
        return link.readlink() == target
    except OSError:
        return False


def _open_dir(path: Path | str, *, dir_fd: int | None = None, create: bool = False) -> int:
    """A handle on a real directory (made first if `create`); MirrorError for a link or
    anything else."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, dir_fd=dir_fd)
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        raise MirrorError(f"{path} is not a directory (a symbolic link?): {exc.strerror}") from None


def _remove_old(folder_fd: int, name_re: re.Pattern[str], folder: Path) -> None:
    """Remove what `folder` holds that `name_re` names and that was last changed a day ago or
    more (STALE_UPLOAD_S), through the folder's handle: nothing is reached through a link."""
    cutoff = time.time() - STALE_UPLOAD_S
    with os.scandir(folder_fd) as entries:
        stale = [e for e in entries if name_re.fullmatch(e.name)]
    for entry in stale:
        try:
            info = entry.stat(follow_symlinks=False)
            if info.st_mtime >= cutoff:
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.name, dir_fd=folder_fd)
            else:
                os.unlink(entry.name, dir_fd=folder_fd)
        except OSError as exc:
            log.warning("cannot remove stale %s/%s: %s", folder, entry.name, exc)


def _shared_ref_commits(shared: Path) -> set[str]:
    """The commits an older hpcops kept refs/hpcops/c/<sha> refs for in the shared repository:
    such a ref's name is its commit. Only names are read (a job may have written there)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        found.update(path.name for path in (shared / "refs" / "hpcops" / "c").iterdir())
    try:
        fd = os.open(shared / "packed-refs", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        fd = -1
    if fd >= 0:
        with os.fdopen(fd, "rb") as packed:
            if stat.S_ISREG(os.fstat(packed.fileno()).st_mode):
                for line in packed.read(MAX_PACKED_REFS_BYTES).decode("ascii", "replace").split():
                    if line.startswith("refs/hpcops/c/"):
                        found.add(line.removeprefix("refs/hpcops/c/"))
    return {name for name in found if FULL_SHA_RE.fullmatch(name)}
