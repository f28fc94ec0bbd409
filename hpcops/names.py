"""Names and identifiers that several layers check the same way, defined once.

Low level on purpose (it imports only the standard library): spec, config, render and code/
all check Slurm names, hpcops names and commit ids, and each must accept exactly what the others
do. Two copies of the Slurm-name pattern had drifted on the first character before they met here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "FULL_COMMIT_RE",
    "NAME_FIRST",
    "NAME_MAX_CHARS",
    "NAME_PATTERN",
    "NAME_REST",
    "SLURM_NAME_FIRST",
    "SLURM_NAME_PATTERN",
    "SLURM_NAME_RE",
    "closest",
]

# A partition, account or QOS name. slurm.conf(5) (Slurm 22.05.8, the dev cluster's) sets no
# character rule for PartitionName, so a leading '_' is legal there and a lab may have one; we
# found no first-character rule documented for account or QOS names either. What we refuse
# protects the #SBATCH line and the argv it becomes: no leading '-' (it would read as an option)
# or '.', nothing but letters, digits and . _ - after it.
SLURM_NAME_FIRST: Final = "[A-Za-z0-9_]"
NAME_REST: Final = "[A-Za-z0-9._-]"
NAME_MAX_CHARS: Final = 64
SLURM_NAME_PATTERN: Final = f"{SLURM_NAME_FIRST}{NAME_REST}{{0,{NAME_MAX_CHARS - 1}}}"
SLURM_NAME_RE: Final = re.compile(SLURM_NAME_PATTERN)

# An hpcops name (a spec's name, which is the job's --job-name; a schedule's name; a GPU type):
# shown to people by squeue and sacct, so it starts with a letter or a digit.
NAME_FIRST: Final = "[A-Za-z0-9]"
NAME_PATTERN: Final = f"{NAME_FIRST}{NAME_REST}{{0,{NAME_MAX_CHARS - 1}}}"

# A full git object name: SHA-1 (40 hex digits) or SHA-256 (64), lower case as git prints it.
FULL_COMMIT_RE: Final = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one choice close enough to `word` to be what was meant ("did you mean"), or None."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


# A Slurm job id as hpcops meets it: a number, or an array task `<array id>_<index>`. Ids come
# from markers, squeue, sacct and the database; anything else never reaches a command line (a
# start marker's "--user=svc" once became an argument of scancel).
JOB_ID_RE = re.compile(r"[1-9][0-9]{0,9}(?:_[0-9]{1,7})?")


def is_job_id(text: str) -> bool:
    return JOB_ID_RE.fullmatch(text) is not None
