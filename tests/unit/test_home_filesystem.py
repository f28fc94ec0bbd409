"""The daemon's home on a network filesystem is found from /proc/self/mountinfo (captured text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcops.home import filesystem_type, network_home

# Shaped as on a cluster login node: local root, NFS home directories, Lustre scratch.
MOUNTINFO = """\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
40 22 0:45 / /home rw,relatime shared:20 - nfs4 fs01:/export/home rw,vers=4.2
41 22 0:46 / /scratch rw,relatime shared:21 - lustre 10.0.0.1@o2ib:/scratch rw,flock
42 41 253:2 / /scratch/local\\040disk rw - ext4 /dev/vdb rw
43 22 0:47 / /gpfs/projects rw - gpfs projects rw
"""


@pytest.mark.parametrize(
    ("path", "fs"),
    [
        ("/var/lib/hpcops", "ext4"),
        ("/home/lab/.hpcops", "nfs4"),
        ("/scratch/lab/hpcops", "lustre"),
        ("/scratch/local disk/hpcops", "ext4"),
        ("/gpfs/projects/lab", "gpfs"),
        ("/homework", "ext4"),  # a prefix of the text is not a parent directory
    ],
)
def test_the_longest_mount_point_holding_the_path_wins(path: str, fs: str) -> None:
    assert filesystem_type(Path(path), MOUNTINFO) == fs


def test_this_machines_tmp_is_not_a_network_home(tmp_path: Path) -> None:
    assert network_home(tmp_path / "not-made-yet" / "home") is None
