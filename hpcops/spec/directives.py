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

# Options refused in extra_directives, with what to use instead. Besides the exact name, sbatch
# (getopt_long) also accepts any unambiguous abbreviation (`--part=gpu` is `--partition=gpu`),
# so an option that is a prefix of one of these is refused too.
#
# Decided option by option from `man sbatch` (Slurm 22.05.8). Three families are refused:
#  - resource shaping: anything that changes how many CPUs, GPUs, nodes, how much memory or time
#    Slurm allocates. hpcops counts a run's use from its resources: fields (quotas, fair share,
#    the release window); `--mincpus=16` or `--exclusive` made a run counted as 1 CPU hold 16.
#  - what hpcops sets or owns: identity, token, logs, dependencies, environment, the queue.
#  - what breaks the submission itself or needs privilege the daemon may have (`--uid`,
#    `--reboot`, a negative `--nice` for a root daemon) or reads a login-node file as the
#    daemon's account (`--bbf`, `--input`, `--export-file`).
# Everything else is allowed: node choice that does not change the count (constraint, prefer,
# exclude, contiguous, switches, tmp, reservation, licenses), binding and frequency (cpu-freq,
# gpu-bind, gpu-freq, mem-bind, distribution, gres-flags), mail, signal, requeue/no-requeue,
# no-kill, oversubscribe, accounting labels (wckey, comment is ours), profile, acctg-freq, ...
_CPUS = "use resources.cpus_per_task (CPUs per task) and resources.ntasks"
_NODES = "use resources.nodes and resources.ntasks"
_GPUS = "use resources.gpus and resources.gpu_type"
_MEM = "use resources.mem (memory per node)"
_COUNTED = "hpcops counts a run's CPUs from resources: "
MODELLED_OPTIONS: Final[dict[str, str]] = {
    # CPUs, tasks and how they are packed onto nodes
    "cpus-per-task": "use resources.cpus_per_task",
    "cpus-per-gpu": _CPUS,
    "mincpus": f"{_COUNTED}{_CPUS}",
    "exclusive": f"it allocates whole nodes while {_COUNTED}{_CPUS} (and resources.mem)",
    "overcommit": f"{_COUNTED}{_CPUS}",
    "ntasks": "use resources.ntasks",
    "ntasks-per-core": f"{_COUNTED}{_CPUS}",
    "ntasks-per-gpu": f"{_COUNTED}{_CPUS}",
    "ntasks-per-node": f"{_COUNTED}{_NODES}",
    "ntasks-per-socket": f"{_COUNTED}{_CPUS}",
    "cores-per-socket": f"{_COUNTED}{_CPUS}",
    "sockets-per-node": f"{_COUNTED}{_CPUS}",
    "threads-per-core": f"it can allocate whole cores while {_COUNTED}{_CPUS}",
    "extra-node-info": f"it can allocate whole cores while {_COUNTED}{_CPUS}",
    "hint": f"nomultithread allocates whole cores while {_COUNTED}{_CPUS}",
    "core-spec": f"it allocates whole nodes while {_COUNTED}{_CPUS}",
    "thread-spec": f"it allocates whole nodes while {_COUNTED}{_CPUS}",
    "tres-per-task": "use resources.gpus and resources.cpus_per_task",
    # nodes
    "nodes": "use resources.nodes",
    "nodelist": f"it allocates every node listed; {_NODES} (and --constraint to choose them)",
    "nodefile": f"it allocates every node listed; {_NODES} (and --constraint to choose them)",
    "spread-job": f"it spreads the job over more nodes; {_NODES}",
    # memory
    "mem": "use resources.mem",
    "mem-per-cpu": _MEM,
    "mem-per-gpu": _MEM,
    # GPUs
    "gres": _GPUS,
    "gpus": _GPUS,
    "gpus-per-node": _GPUS,
    "gpus-per-task": _GPUS,
    "gpus-per-socket": _GPUS,
    # time
    "time": "use resources.time",
    "time-min": "use resources.time (the time limit hpcops plans with)",
    # where and under whose name the job runs
    "partition": "use resources.partition",
    "qos": "use resources.qos",
    "account": "the lab's Slurm account comes from the daemon's config",
    "clusters": "the daemon follows jobs on one cluster",
    "cluster-constraint": "the daemon follows jobs on one cluster",
    "uid": "hpcops submits every job as the daemon's account",
    "gid": "hpcops submits every job as the daemon's account",
    # what hpcops owns in the job
    "job-name": "use name",
    "comment": "hpcops keeps its submission token there",
    "output": "hpcops writes stdout.log in the run directory",
    "error": "hpcops writes stderr.log in the run directory",
    "input": "the command reads its own input (e.g. python train.py < data.txt)",
    "open-mode": "hpcops owns the run directory's logs",
    "chdir": "use workdir",
    "export": "use env (the daemon's own variables: jobs.env_passthrough in its config)",
    "export-file": "use env (the daemon's own variables: jobs.env_passthrough in its config)",
    "get-user-env": "hpcops gives the job an explicit environment: use env",
    "wrap": "use command",
    "array": "submit one spec per task instead",
    "dependency": "hpcops sets dependencies itself (data staging)",
    "kill-on-invalid-dep": "hpcops sets dependencies itself (data staging)",
    # the lab's queue
    "hold": "runs wait in hpcops' own queue, where priorities apply",
    "begin": "runs wait in hpcops' own queue (hpcops hold, or a schedule), not in Slurm's",
    "deadline": "a run pending in Slurm holds one of the lab's release slots; keep it short",
    "priority": "use priority (the order in the lab's queue)",
    "nice": "use priority: hpcops orders the lab's runs itself, and a daemon with Slurm "
    "privileges would honour a negative nice",
    "reboot": "rebooting nodes is for the cluster's admins",
    # the submission itself
    "parsable": "the daemon passes it to sbatch itself",
    "wait": "the daemon submits and follows the job; sbatch must return at once",
    "test-only": "hpcops must really submit the job it records",
    "help": "sbatch would print its help and submit nothing",
    "usage": "sbatch would print its usage and submit nothing",
    "version": "sbatch would print its version and submit nothing",
    "quiet": "the daemon reads sbatch's own output",
    "verbose": "the daemon reads sbatch's own output",
    "bbf": "it reads a file on the login node as the daemon's account; use --bb",
}
# sbatch's long options (`man sbatch`, Slurm 22.05.8). An exact name is never an abbreviation:
# getopt_long takes `--bb` as --bb, not as the --bbf it is a prefix of.
SBATCH_LONG_OPTIONS: Final = frozenset(
    {
        "account", "acctg-freq", "array", "batch", "bb", "bbf", "begin", "chdir",
        "cluster-constraint", "clusters", "comment", "constraint", "container", "contiguous",
        "core-spec", "cores-per-socket", "cpu-freq", "cpus-per-gpu", "cpus-per-task",
        "deadline", "delay-boot", "dependency", "error", "exclude", "exclusive", "export",
        "export-file", "extra-node-info", "get-user-env", "gid", "gpu-bind", "gpu-freq",
        "gpus", "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags",
        "help", "hint", "hold", "ignore-pbs", "input", "job-name", "kill-on-invalid-dep",
        "licenses", "mail-type", "mail-user", "mcs-label", "mem", "mem-bind", "mem-per-cpu",
        "mem-per-gpu", "mincpus", "network", "nice", "no-kill", "no-requeue", "nodefile",
        "nodelist", "nodes", "ntasks", "ntasks-per-core", "ntasks-per-gpu", "ntasks-per-node",
        "ntasks-per-socket", "open-mode", "output", "overcommit", "oversubscribe", "parsable",
        "partition", "power", "prefer", "priority", "profile", "propagate", "qos", "quiet",
        "reboot", "requeue", "reservation", "signal", "sockets-per-node", "spread-job",
        "switches", "test-only", "thread-spec", "threads-per-core", "time", "time-min", "tmp",
        "uid", "usage", "use-min-nodes", "verbose", "version", "wait", "wait-all-nodes",
        "wckey", "wrap",
    }
)  # fmt: skip
_OPTION_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")
_DIRECTIVE_VALUE_RE = re.compile(r"[A-Za-z0-9_.,:=@%/+-]{1,200}")
_DIRECTIVE_VALUE_CHAR_RE = re.compile(r"[A-Za-z0-9_.,:=@%/+-]")
_DIRECTIVE_EXAMPLE: Final = "e.g. '--constraint=skylake' or '--mail-type=END,FAIL'"


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
        return f"--{option} is not accepted here: {MODELLED_OPTIONS[option]}"
    abbreviates = []
    if option not in SBATCH_LONG_OPTIONS:
        abbreviates = sorted(o for o in MODELLED_OPTIONS if o.startswith(option))
    if len(abbreviates) == 1:
        full = abbreviates[0]
        return (
            f"--{option} is an abbreviation sbatch would read as --{full}, which is not "
            f"accepted here: {MODELLED_OPTIONS[full]}"
        )
    if abbreviates:
        named = ", ".join(f"--{o}" for o in abbreviates)
        return (
            f"--{option} abbreviates options that are not accepted here ({named}); write an "
            "option in full"
        )
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


def sets_signal(item: str) -> bool:
    """An item sbatch reads as --signal, which `checkpoint:` sets (getopt_long takes `--sig`
    for it too)."""
    option = item.removeprefix("--").partition("=")[0]
    return item.startswith("--") and len(option) >= 2 and "signal".startswith(option)


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
