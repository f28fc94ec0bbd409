"""Where a daemon's files live in its home.

Light on purpose: every CLI call imports it to find the socket, and `hpcops submit` on the login
node runs by the thousand (issue 16). At import it loads only `os` and `re`, which the interpreter
and json have loaded anyway; pathlib, dataclasses and typing each cost a fresh process several
milliseconds of CPU. `TYPE_CHECKING = False` (a constant mypy honours like typing's) keeps the
annotations' names for mypy without importing typing.
"""

from __future__ import annotations

import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

SOCKET_NAME = "hpcops.sock"


def default_home_text() -> str:
    """$HPCOPS_HOME, else ~/.hpcops, as text: what the CLI's hot calls use, without pathlib."""
    env = os.environ.get("HPCOPS_HOME")
    return os.path.expanduser(env) if env else os.path.join(os.path.expanduser("~"), ".hpcops")


def default_home() -> Path:
    """$HPCOPS_HOME, else ~/.hpcops. Here, not in config.py: `hpcops api` (run over SSH for every
    laptop call) needs the home and nothing of pydantic."""
    from pathlib import Path

    return Path(default_home_text())


def socket_in(home: str | os.PathLike[str]) -> str:
    """The daemon's socket in `home`, as text."""
    return os.path.join(home, SOCKET_NAME)


class HomePaths:
    """A daemon home's files by role."""

    __slots__ = ("home",)

    def __init__(self, home: Path) -> None:
        self.home = home

    def __repr__(self) -> str:
        return f"HomePaths({self.home!r})"

    @property
    def socket(self) -> Path:
        return self.home / SOCKET_NAME

    @property
    def lock(self) -> Path:
        return self.home / "daemon.lock"

    @property
    def pid(self) -> Path:
        return self.home / "daemon.pid"

    @property
    def log(self) -> Path:
        return self.home / "daemon.log"

    @property
    def console(self) -> Path:
        """stdout/stderr of a background daemon: tracebacks from before logging was set up."""
        return self.home / "daemon.out"

    @property
    def database(self) -> Path:
        return self.home / "hpcops.db"

    @property
    def mirror_state(self) -> Path:
        """The code mirror's git directory (config, refs) and its bundle work: the daemon's own,
        off scratch, because git runs what a repository's config tells it to."""
        return self.home / "code-mirror"


# Filesystems that compute nodes typically share with the login node, where a member's job could
# write the daemon's database, config or socket, and where SQLite's locking is not safe.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.beegfs",
        "panfs",
        "pvfs2",
        "orangefs",
        "afs",
        "9p",
    }
)


def filesystem_type(path: Path, mountinfo: str) -> str | None:
    """The filesystem type of the mount that holds `path` (an absolute, resolved path), read
    from the text of /proc/self/mountinfo: the longest mount point that is a prefix wins."""
    from pathlib import Path

    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or dash + 1 >= len(fields):
            continue
        # mountinfo escapes spaces and the like in octal (\040)
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        fs_type = fields[dash + 1]
        mp = Path(mount_point)
        if path == mp or mp in path.parents:
            depth = len(mp.parts)
            if best is None or depth >= best[0]:
                best = (depth, fs_type)
    return best[1] if best else None


def network_home(home: Path) -> str | None:
    """The network filesystem the daemon's home is on (say "nfs4"), or None when it is on a
    local disk (or this is not Linux and nobody can tell)."""
    from pathlib import Path

    try:
        mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    probe = home
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # a home not made yet: ask about where it will be made
    fs_type = filesystem_type(probe.resolve(), mountinfo)
    if fs_type is None:
        return None
    return fs_type if fs_type in NETWORK_FILESYSTEMS or fs_type.startswith("nfs") else None
