"""Folders the cluster tests make under /tmp: daemon homes, spec folders, repositories. Not
pytest's tmp_path: run directories land on #SBATCH lines, which take only plain path
characters, and pytest's names can hold brackets; and the lab's users must reach them.

Each xdist worker removes the folders it made when its session ends without a failure, and
keeps every one, with the daemons' logs, when a test failed: a long-lived dev machine otherwise
gathers them by the thousand (tens of GB), while a failure is still there to read."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

MADE: list[Path] = []


def scratch_dir(prefix: str, *, mode: int = 0o700) -> Path:
    """A fresh folder /tmp/PREFIX-RANDOM, removed at the end of a session that passed."""
    path = Path("/tmp") / f"{prefix}-{uuid.uuid4().hex[:10]}"
    path.mkdir(mode=mode)
    MADE.append(path)
    return path


def made_here(path: Path) -> Path:
    """A folder made by other means, removed as the scratch folders are."""
    MADE.append(path)
    return path


def remove_all() -> None:
    for path in MADE:
        shutil.rmtree(path, ignore_errors=True)
    MADE.clear()
