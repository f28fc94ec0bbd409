"""The run's exact code, by git: resolved on the submitter's machine, shipped to the lab's mirror.

    laptop (workspace.py)                         login node (mirror.py)
    resolve spec's repo + commit ─┐
    dirty? refuse, or snapshot ───┤  code_have  ─► which of these commits does the mirror hold?
    bundle of what is missing ────┴─ SFTP/copy ─► incoming/ ─► git fetch into the mirror (its
                                                  git directory in the daemon's home, its
                                                  objects in mirror.git on scratch)
                                                               job: checkout of that commit

A bundle holds only what the mirror lacks, so the second submit of a repository ships a few KiB.
"""
