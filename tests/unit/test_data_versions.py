"""A data version read from the lab's code mirror with real git (hpcops.data.versions), and a
mirror on scratch that a job has tampered with: the .dvc file is read once, bounded."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from hpcops.code.git import git
from hpcops.data.versions import MAX_DVC_FILE_BYTES, DataVersionError, read_version

IDENTITY = {"GIT_AUTHOR_NAME": "Ana", "GIT_AUTHOR_EMAIL": "ana@lab"}
IDENTITY |= {"GIT_COMMITTER_NAME": "Ana", "GIT_COMMITTER_EMAIL": "ana@lab"}
DS_DVC = """outs:
- md5: 3b4d9879fdfb0cb6cedd91bca0746737.dir
  size: 1000391
  nfiles: 51
  hash: md5
  path: ds
"""


def _commit(repo: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(["add", "."], cwd=repo)
    git(["commit", "--quiet", "-m", "data"], cwd=repo, env=IDENTITY)
    return git(["rev-parse", "HEAD"], cwd=repo).strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(["init", "--quiet"], cwd=path)
    return path


def test_the_version_is_read_from_the_dvc_file_at_the_commit(repo: Path) -> None:
    commit = _commit(repo, {"ds.dvc": DS_DVC})
    assert read_version(str(repo / ".git"), commit, "ds") == (
        "3b4d9879fdfb0cb6cedd91bca0746737.dir",
        1000391,
        51,
    )
    with pytest.raises(DataVersionError, match=r"other\.dvc is not in the repository"):
        read_version(str(repo / ".git"), commit, "other")


def test_a_dvc_file_too_large_to_be_one_is_refused(repo: Path) -> None:
    commit = _commit(repo, {"ds.dvc": DS_DVC + "#" * MAX_DVC_FILE_BYTES})
    with pytest.raises(DataVersionError, match=r"bytes; not a \.dvc file"):
        read_version(str(repo / ".git"), commit, "ds")


def test_an_object_swapped_after_its_size_was_read_is_never_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a job swapping the loose object on scratch between two git calls makes git say: a
    # small size, then a blob of 10 MB. The daemon reads one blob, and no more of it than a
    # .dvc file can be: git is stopped before it has written the rest.
    real_git, head, tr = (shutil.which(tool) for tool in ("git", "head", "tr"))
    done = tmp_path / "wrote-it-all"
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *"cat-file -s "*) echo 100 ;;\n'
        f'  *"cat-file blob "*) {head} -c 10000000 /dev/zero | {tr} "\\\\0" a && : >{done} ;;\n'
        f'  *) exec {real_git} "$@" ;;\n'
        "esac\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}:{tmp_path / 'nothing'}")
    with pytest.raises(DataVersionError, match=f"over {MAX_DVC_FILE_BYTES} bytes"):
        read_version(str(tmp_path), "0" * 40, "ds")
    assert not done.exists()
