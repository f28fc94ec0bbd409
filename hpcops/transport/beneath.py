"""Opening files that a job may have written, without following anything the job planted.

Run directories, relay stores and the data cache sit on storage that members' jobs write, as the
daemon's own account. A job can put a symbolic link where a log should be (`stdout.log ->
/proc/self/environ`), a FIFO where a marker should be, or swap a directory for a link between the
daemon's check and its read. So every such file is opened from a trusted root directory (one the
daemon's config names), one path component at a time, never following a link:

- `openat2(2)` with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS where the kernel
  has it (Linux 5.6+): the kernel refuses any link and any escape from the root in one call;
- elsewhere, `openat(2)` per component with O_NOFOLLOW | O_DIRECTORY from the previous handle,
  which refuses the same links (a link in any component fails with ELOOP or ENOTDIR).

The final handle is checked on itself (fstat): only a regular file is read. O_NONBLOCK keeps a
FIFO from blocking the open. Everything is read from that handle, so a file swapped after the
check is never the one read.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from pathlib import Path, PurePath

from hpcops.transport.base import FileChunk, TransportError


class UnsafeFile(TransportError):
    """A path under a trusted root that is not a plain file reached without links: a symbolic
    link, a FIFO, a device, a directory, or a path that leaves the root."""


# openat2(2): the same number on x86_64 and aarch64 (the syscall table is unified since 5.x).
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine())
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_libc: ctypes.CDLL | None = None
_openat2_works: bool | None = None  # None: not tried yet


def _relative_parts(relative: PurePath) -> list[str]:
    if relative.is_absolute():
        raise UnsafeFile(f"{relative}: expected a path relative to its root")
    parts = [part for part in relative.parts if part not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeFile(f"{relative}: not a plain path beneath its root")
    return parts


def _openat2(dir_fd: int, relative: str) -> int | None:
    """The handle, or None where the kernel has no openat2 (then the caller walks by hand)."""
    global _libc, _openat2_works
    if _SYS_OPENAT2 is None or _openat2_works is False:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = _OpenHow(
        flags=_OPEN_FLAGS,
        mode=0,
        resolve=_RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS,
    )
    fd = _libc.syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(relative)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        _openat2_works = True
        return int(fd)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and _openat2_works is None:
        # No openat2 here (old kernel, or a seccomp filter that refuses it): walk by hand.
        _openat2_works = False
        return None
    raise OSError(err, os.strerror(err), relative)


def _walk(dir_fd: int, parts: list[str]) -> int:
    """openat per component, never following a link; returns the final handle."""
    current = dir_fd
    try:
        for name in parts[:-1]:
            nxt = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current
            )
            if current != dir_fd:
                os.close(current)
            current = nxt
        return os.open(parts[-1], _OPEN_FLAGS, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


def open_beneath(
    root: Path, relative: PurePath, *, use_openat2: bool = True, directory: bool = False
) -> int:
    """A read-only handle on the regular file (or, with `directory`, the directory)
    `root/relative`, reached without following any link below `root`. Raises
    FileNotFoundError when it does not exist, UnsafeFile when it is not a plain file (or
    directory) reached that way, PermissionError when it cannot be read."""
    parts = _relative_parts(relative)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = _openat2(root_fd, "/".join(parts)) if use_openat2 else None
            if fd is None:
                fd = _walk(root_fd, parts)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                raise UnsafeFile(f"{root / relative}: reached through a link; not read") from exc
            if exc.errno in (errno.ENXIO, errno.ENODEV):
                raise UnsafeFile(f"{root / relative}: not a regular file; not read") from exc
            raise
    finally:
        os.close(root_fd)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not (stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)):
        os.close(fd)
        kind = "a directory" if directory else "a regular file"
        raise UnsafeFile(f"{root / relative}: not {kind}; not read")
    return fd


def read_from(fd: int, offset: int, max_bytes: int) -> FileChunk:
    """Up to max_bytes from offset (negative: the last -offset bytes), from an open handle;
    the handle's file size bounds the read, so a file that grows meanwhile costs no more."""
    size = os.fstat(fd).st_size
    start = max(0, size + offset) if offset < 0 else min(offset, size)
    want = max(0, min(max_bytes, size - start))
    chunks: list[bytes] = []
    at = start
    while want > 0:
        data = os.pread(fd, want, at)
        if not data:
            break
        chunks.append(data)
        at += len(data)
        want -= len(data)
    return FileChunk(b"".join(chunks), start, size)


def read_beneath(root: Path, relative: PurePath, offset: int, max_bytes: int) -> FileChunk:
    """`read_from` on `open_beneath`: the bytes of a job-written file, bounded and link-free."""
    fd = open_beneath(root, relative)
    try:
        return read_from(fd, offset, max_bytes)
    finally:
        os.close(fd)


def split_under(roots: tuple[Path, ...], path: PurePath) -> tuple[Path, PurePath] | None:
    """The trusted root that `path` lies under, and the rest of it; None if under none."""
    for root in roots:
        try:
            return root, PurePath(path).relative_to(root)
        except ValueError:
            continue
    return None


def anchor(roots: tuple[Path, ...], path: PurePath) -> tuple[Path, PurePath]:
    """Where to open `path` from: the trusted root it lies under, or else its own directory
    (so that at least its last component is never a link)."""
    found = split_under(roots, path)
    if found is not None:
        return found
    return Path(path).parent, PurePath(Path(path).name)


def list_beneath(
    root: Path, relative_dir: PurePath, *, max_files: int = 10_000, max_depth: int = 16
) -> list[str]:
    """The regular files below `root/relative_dir`, as sorted relative POSIX paths, found
    without following links: a linked directory or file is left out, and so is anything past
    `max_depth` levels or `max_files` files (a job can make millions). A missing directory, or
    one that is itself a link, has no files."""
    try:
        top = open_beneath(root, relative_dir, directory=True)
    except (FileNotFoundError, UnsafeFile, NotADirectoryError):
        return []
    found: list[str] = []

    def visit(dir_fd: int, prefix: str, depth: int) -> None:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if len(found) >= max_files:
                    return
                if entry.is_symlink():
                    continue
                name = f"{prefix}{entry.name}"
                if entry.is_file(follow_symlinks=False):
                    found.append(name)
                elif entry.is_dir(follow_symlinks=False) and depth < max_depth:
                    try:
                        sub = os.open(
                            entry.name,
                            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=dir_fd,
                        )
                    except OSError:
                        continue  # swapped for a link or removed since the listing
                    try:
                        visit(sub, f"{name}/", depth + 1)
                    finally:
                        os.close(sub)

    try:
        visit(top, "", 1)
    finally:
        os.close(top)
    return sorted(found)


def copy_beneath(
    root: Path, relative: PurePath, dest: Path, *, max_bytes: int, whole: bool = False
) -> int:
    """Copy the job-written file `root/relative` into `dest` (a path the daemon owns), from a
    link-free handle: at most its last `max_bytes`, after a note of what was left out (or, with
    `whole`, UnsafeFile for a larger file: half a model is worse than none). Returns the file's
    size. Whatever is uploaded or parsed later is this copy, never the job's path."""
    fd = open_beneath(root, relative)
    try:
        size = os.fstat(fd).st_size
        if whole and size > max_bytes:
            raise UnsafeFile(f"{root / relative}: {size} bytes, more than {max_bytes}; not read")
        with dest.open("wb") as out:
            if size > max_bytes:
                left_out = size - max_bytes
                out.write(f"[hpcops: the first {left_out} bytes of {size} are left out]\n".encode())
            start = max(0, size - max_bytes)
            remaining = size - start
            while remaining > 0:
                data = os.pread(fd, min(remaining, 1024 * 1024), start)
                if not data:
                    break
                out.write(data)
                start += len(data)
                remaining -= len(data)
        return size
    finally:
        os.close(fd)
