"""`extra_directives`: the escape hatch for sbatch options nobody modelled, and its limits.

An item is `--option` or `--option=value`, written on an #SBATCH line as given. It may not set
an option hpcops sets or models as a field (nor abbreviate one, as sbatch allows), and its value
is a strict character set, because sbatch reads #SBATCH lines without a shell's quoting.
"""

from __future__ import annotations

import re
from typing import Final

from hpcops.describe import describe_char, show

MAX_EXTRA_DIRECTIVES: Final = 32

# Options hpcops sets itself or models as a field, with what to use instead. Besides the exact
# name, sbatch (getopt_long) also accepts any unambiguous abbreviation (`--part=gpu` is
# `--partition=gpu`), so an option that is a prefix of one of these is refused too.
MODELLED_OPTIONS: Final[dict[str, str]] = {
    "partition": "use resources.partition",
    "nodes": "use resources.nodes",
    "ntasks": "use resources.ntasks",
    "cpus-per-task": "use resources.cpus_per_task",
    "cpus-per-gpu": "use resources.cpus_per_task",
    "mem": "use resources.mem",
    "mem-per-cpu": "use resources.mem (memory per node)",
    "mem-per-gpu": "use resources.mem (memory per node)",
    "gres": "use resources.gpus and resources.gpu_type",
    "gpus": "use resources.gpus and resources.gpu_type",
    "gpus-per-node": "use resources.gpus and resources.gpu_type",
    "gpus-per-task": "use resources.gpus and resources.gpu_type",
    "gpus-per-socket": "use resources.gpus and resources.gpu_type",
    "tres-per-task": "use resources.gpus and resources.cpus_per_task",
    "time": "use resources.time",
    "qos": "use resources.qos",
    "account": "the lab's Slurm account comes from the daemon's config",
    "job-name": "use name",
    "comment": "hpcops keeps its submission token there",
    "output": "hpcops writes stdout.log in the run directory",
    "error": "hpcops writes stderr.log in the run directory",
    "open-mode": "hpcops owns the run directory's logs",
    "chdir": "use workdir",
    "dependency": "hpcops sets dependencies itself (data staging)",
    "kill-on-invalid-dep": "hpcops sets dependencies itself (data staging)",
    "parsable": "the daemon passes it to sbatch itself",
    "wrap": "use command",
    "array": "submit one spec per task instead",
    "export": "use env",
    "export-file": "use env",
    "hold": "runs wait in hpcops' own queue, where priorities apply",
    "begin": "runs wait in hpcops' own queue (hpcops hold, or a schedule), not in Slurm's",
    "deadline": "a run pending in Slurm holds one of the lab's release slots; keep it short",
    "wait": "the daemon submits and follows the job; sbatch must return at once",
    "test-only": "hpcops must really submit the job it records",
    "clusters": "the daemon follows jobs on one cluster",
    "priority": "use priority (the order in the lab's queue)",
}
_OPTION_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")
_DIRECTIVE_VALUE_RE = re.compile(r"[A-Za-z0-9_.,:=@%/+-]{1,200}")
_DIRECTIVE_VALUE_CHAR_RE = re.compile(r"[A-Za-z0-9_.,:=@%/+-]")
_DIRECTIVE_EXAMPLE: Final = "e.g. '--constraint=skylake' or '--exclusive'"


def extra_directive_problem(item: str) -> str | None:
    """What is wrong with one `extra_directives` item (`--option` or `--option=value`), or None.

    render.py asks again just before it writes the item on an #SBATCH line.
    """
    if len(item) > 256:
        return f"is {len(item)} characters long; at most 256"
    if item.startswith("#SBATCH"):
        return f"write the option alone, without '#SBATCH'; {_DIRECTIVE_EXAMPLE}"
    if not item.startswith("--"):
        if item.startswith("-"):
            return (
                f"short options such as {show(item.split()[0] if item.split() else item)} are "
                f"not accepted; use the long form, {_DIRECTIVE_EXAMPLE}"
            )
        return f"must start with '--'; {_DIRECTIVE_EXAMPLE}"
    option, eq, value = item[2:].partition("=")
    if not _OPTION_RE.fullmatch(option):
        bad = next((ch for ch in option if not re.fullmatch(r"[a-z0-9-]", ch)), None)
        if bad in {" ", "\t"} and not eq:
            return f"separate the value with '=' rather than a space; {_DIRECTIVE_EXAMPLE}"
        what = f"contains {describe_char(bad)}" if bad else "is not a long option name"
        return (
            f"the option name {show(option)} {what}; option names are lower-case letters, "
            f"digits and '-'; {_DIRECTIVE_EXAMPLE}"
        )
    if option in MODELLED_OPTIONS:
        return f"--{option} is set by hpcops: {MODELLED_OPTIONS[option]}"
    abbreviates = sorted(o for o in MODELLED_OPTIONS if o.startswith(option))
    if len(abbreviates) == 1:
        full = abbreviates[0]
        return (
            f"--{option} is an abbreviation sbatch would read as --{full}, which is set by "
            f"hpcops: {MODELLED_OPTIONS[full]}"
        )
    if abbreviates:
        named = ", ".join(f"--{o}" for o in abbreviates)
        return f"--{option} abbreviates options hpcops sets ({named}); write an option in full"
    if eq and not _DIRECTIVE_VALUE_RE.fullmatch(value):
        if not value:
            return f"has '=' but no value; {_DIRECTIVE_EXAMPLE}"
        bad_char = next((ch for ch in value if not _DIRECTIVE_VALUE_CHAR_RE.fullmatch(ch)), None)
        if bad_char is None:
            return f"the value is {len(value)} characters long; at most 200"
        return (
            f"the value contains {describe_char(bad_char)}; values are letters, digits and "
            f"_ . , : = @ % / + - only (no spaces, quotes, $, `, ; or newlines); "
            f"{_DIRECTIVE_EXAMPLE}"
        )
    return None


def check_extra_directive(item: str) -> str:
    problem = extra_directive_problem(item)
    if problem is not None:
        raise ValueError(problem)
    return item


def check_extra_directives(items: list[str]) -> list[str]:
    if len(items) > MAX_EXTRA_DIRECTIVES:
        raise ValueError(f"has {len(items)} items; at most {MAX_EXTRA_DIRECTIVES}")
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        option = item.partition("=")[0]
        if option in seen:
            raise ValueError(
                f"{option} is given twice (items {seen[option]} and {i}); sbatch would keep only "
                "the last"
            )
        seen[option] = i
    return items
