"""The spec's field checks: each takes a value pydantic has typed and returns it, or raises
ValueError with the message a user sees (what is wrong, what is allowed, usually an example).

Pure and free of pydantic: model.py attaches them to fields with AfterValidator/BeforeValidator.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hpcops import cadence
from hpcops.describe import CONTROL_RE, describe_char, describe_value, show
from hpcops.names import NAME_FIRST, NAME_MAX_CHARS, NAME_REST, SLURM_NAME_FIRST, closest
from hpcops.specfile import _URL_SCHEMES, is_repo_url
from hpcops.units import parse_mem_mb, parse_slurm_time

ParamValue = str | int | float | bool

MAX_TIME_S: Final = 30 * 24 * 3600
MAX_MEM_MB: Final = 16 * 1024 * 1024  # 16T: more than any node we know of has
MAX_COMMAND_BYTES: Final = 64 * 1024  # bash -c gets it as one argument; Linux caps one at 128 KiB
MAX_VALUE_CHARS: Final = 4096
MAX_TAG_VALUE_CHARS: Final = 256
MAX_PARAMS: Final = 200
MAX_ENV: Final = 200
MAX_TAGS: Final = 100
MAX_WORKDIR_CHARS: Final = 4096

# The command is shell code: it may hold newlines and tabs, and no other control character.
_COMMAND_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Token:
    """A short identifier that may end up on an #SBATCH line: a strict character set."""

    what: str
    first: str  # regex class for the first character
    rest: str  # regex class for the others
    allowed: str  # those classes in words
    max_len: int
    example: str
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        pattern = re.compile(f"{self.first}{self.rest}{{0,{self.max_len - 1}}}")
        object.__setattr__(self, "pattern", pattern)

    def check(self, value: str) -> str:
        if self.pattern.fullmatch(value):
            return value
        rule = (
            f"{self.what} must be {self.allowed}, at most {self.max_len} characters, "
            f"e.g. {self.example!r}"
        )
        if not value:
            raise ValueError(f"is empty; {rule}")
        rest = re.compile(self.rest)
        for i, ch in enumerate(value):
            if not rest.fullmatch(ch):
                raise ValueError(f"contains {describe_char(ch)} at position {i + 1}; {rule}")
        if not re.fullmatch(self.first, value[0]):
            raise ValueError(f"starts with {describe_char(value[0])}; {rule}")
        raise ValueError(f"is {len(value)} characters long; {rule}")


NAME = Token(
    "a name",
    NAME_FIRST,
    NAME_REST,
    "letters, digits, '.', '_' or '-', starting with a letter or digit",
    NAME_MAX_CHARS,
    "mnist-baseline",
)
PARTITION = Token(
    "a partition",
    SLURM_NAME_FIRST,
    NAME_REST,
    "letters, digits, '.', '_' or '-'",
    NAME_MAX_CHARS,
    "gpu",
)
QOS = Token(
    "a QOS", SLURM_NAME_FIRST, NAME_REST, "letters, digits, '.', '_' or '-'", NAME_MAX_CHARS, "high"
)
GPU_TYPE = Token(
    "a GPU type",
    NAME_FIRST,
    NAME_REST,
    "letters, digits, '.', '_' or '-' (as in the cluster's gres.conf)",
    NAME_MAX_CHARS,
    "a100",
)
TEMPLATE = Token(
    "a template name",
    "[a-z0-9]",
    "[a-z0-9_-]",
    "lower-case letters, digits, '_' or '-' (the file is <name>.sh.j2)",
    64,
    "default",
)
PARAM_KEY = Token(
    "a parameter name",
    "[A-Za-z_]",
    "[A-Za-z0-9_]",
    "letters, digits and '_', not starting with a digit (it becomes HPCOPS_PARAM_<NAME>)",
    64,
    "learning_rate",
)
TAG_KEY = Token(
    "a tag name",
    "[A-Za-z_]",
    "[A-Za-z0-9_]",
    "letters, digits and '_', not starting with a digit",
    64,
    "paper",
)
ENV_KEY = Token(
    "an environment variable name",
    "[A-Za-z_]",
    "[A-Za-z0-9_]",
    "letters, digits and '_', not starting with a digit",
    128,
    "OMP_NUM_THREADS",
)


def check_partition(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > 256:
        raise ValueError(f"is {len(value)} characters long; at most 256")
    # sbatch takes a comma-separated list: the job starts in whichever partition frees first.
    for part in value.split(","):
        try:
            PARTITION.check(part)
        except ValueError as exc:
            raise ValueError(f"{exc} (or a comma-separated list such as 'gpu,gpu-long')") from None
    return value


def optional(token: Token) -> Callable[[str | None], str | None]:
    def check(value: str | None) -> str | None:
        return None if value is None else token.check(value)

    return check


def check_text(value: str, *, max_chars: int, what: str = "text") -> str:
    """Free text that must stay on one line: no control characters, bounded length."""
    bad = CONTROL_RE.search(value)
    if bad:
        raise ValueError(
            f"contains {describe_char(bad.group())} at position {bad.start() + 1}; "
            f"{what} must be on one line, without control characters"
        )
    if len(value) > max_chars:
        raise ValueError(f"is {len(value)} characters long; at most {max_chars}")
    return value


def check_experiment(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; give the experiment the results are filed under, e.g. 'mnist'")
    check_text(value, max_chars=100, what="an experiment name")
    if not value.isprintable():
        ch = next(c for c in value if not c.isprintable())
        raise ValueError(f"contains the unprintable character U+{ord(ch):04X}; e.g. 'mnist'")
    if value != value.strip():
        raise ValueError(f"has spaces at its start or end ({show(value)}); e.g. 'mnist'")
    return value


def check_command(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; e.g. command: python train.py --epochs 10")
    bad = _COMMAND_CONTROL_RE.search(value)
    if bad:
        line = value.count("\n", 0, bad.start()) + 1
        raise ValueError(
            f"contains {describe_char(bad.group())} on its line {line}; a command may hold "
            "newlines and tabs but no other control characters"
        )
    size = len(value.encode("utf-8"))
    if size > MAX_COMMAND_BYTES:
        raise ValueError(
            f"is {size} bytes; at most {MAX_COMMAND_BYTES} (64 KiB). Put a long script in a file "
            "and run that, e.g. command: bash run.sh"
        )
    return value


def check_workdir(value: str | None) -> str | None:
    if value is None:
        return None
    check_text(value, max_chars=MAX_WORKDIR_CHARS, what="a path")
    if value.startswith("~"):
        raise ValueError(
            f"starts with '~', which hpcops does not expand; write the full path, "
            f"e.g. /home/ana/mnist (got {show(value)})"
        )
    if not value.startswith("/") and ".." in Path(value).parts:
        raise ValueError(f"a path inside the checkout cannot go up with '..'; got {show(value)}")
    return value


_REV_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/~^-]{0,199}")


def check_repo(value: str) -> str:
    check_text(value, max_chars=MAX_WORKDIR_CHARS, what="a path or URL")
    if not value or value.startswith("-"):
        raise ValueError(
            f"must be a git repository: a path such as /home/ana/mnist or '.', or a URL such as "
            f"https://github.com/lab/mnist.git; got {show(value)}"
        )
    if "://" in value and not is_repo_url(value):
        raise ValueError(
            f"URL scheme not allowed; use one of {', '.join(s[:-3] for s in _URL_SCHEMES)} "
            f"(got {show(value)})"
        )
    if value.startswith("~"):
        raise ValueError(
            f"starts with '~', which hpcops does not expand; write the full path "
            f"(got {show(value)})"
        )
    if not is_repo_url(value) and not value.startswith("/"):
        raise ValueError(
            f"must be an absolute path or a URL; got {show(value)} (a relative repo is resolved "
            "against the spec file's folder only when hpcops reads the file itself)"
        )
    return value


def check_rev(value: str) -> str:
    if not _REV_RE.fullmatch(value) or ".." in value or value.endswith(("/", ".lock")):
        raise ValueError(
            "must be a commit id, a branch or a tag (letters, digits, '.', '_', '/', '-', '~', "
            f"'^'; no '..'), e.g. 'main' or '3f2a9c1'; got {show(value)}"
        )
    return value


_DATA_PATH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/@+-]{0,1023}")
_DATA_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
MAX_DATA_TARGETS: Final = 16


def check_data_path(value: str) -> str:
    """A path inside a repository (or the job's work directory): relative, never going up."""
    if (
        not _DATA_PATH_RE.fullmatch(value)
        or ".." in value.split("/")
        or "//" in value
        or value.endswith("/")
    ):
        raise ValueError(
            "must be a relative path of letters, digits and . _ / @ + - (no '..', no "
            f"leading or trailing '/'), e.g. data/mnist; got {show(value)}"
        )
    return value


def check_data_repo(value: str | None) -> str | None:
    if value is None:
        return None
    check_repo(value)
    if not is_repo_url(value):
        raise ValueError(
            "must be a URL the cluster can fetch (https, ssh, git, file or user@host:path); data "
            f"in the run's own repository needs no repo (got {show(value)})"
        )
    return value


def data_env_name(path: str) -> str:
    """HPCOPS_DATA_<NAME> for a target without a name: its last path part, in capitals."""
    base = re.sub(r"[^A-Za-z0-9]", "_", path.rsplit("/", 1)[-1]).upper().strip("_") or "DATA"
    return base if base[0].isalpha() else f"D_{base}"


def optional_rev(value: str | None) -> str | None:
    return None if value is None else check_rev(value)


def optional_data_path(value: str | None) -> str | None:
    return None if value is None else check_data_path(value)


def optional_data_name(value: str | None) -> str | None:
    if value is not None and not _DATA_NAME_RE.fullmatch(value):
        raise ValueError(
            "must be capital letters, digits and '_', starting with a letter (the job gets "
            f"HPCOPS_DATA_<NAME>), e.g. MNIST; got {show(value)}"
        )
    return value


def in_range(lo: int, hi: int, example: str) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}; got {value} (e.g. {example})")
        return value

    return check


def scalar_text(value: object) -> object:
    """YAML numbers and booleans given where text is expected, as the text a shell would see."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number or a string; got {value!r}")
        return repr(value)
    return value


def int_as_text(value: object) -> object:
    """`mem: 4096` and `time: 90` are YAML integers; their fields hold the text Slurm reads."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def check_param_value(value: object) -> object:
    if isinstance(value, str):
        return check_text(value, max_chars=MAX_VALUE_CHARS, what="a parameter value")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number; got {value!r}")
    if isinstance(value, bool | int | float):
        return value
    if value is None:
        raise ValueError("is empty (null); give it a value, or remove the line")
    raise ValueError(
        f"must be a string, a number or true/false; got {describe_value(value)}. "
        "A list or mapping does not fit in one environment variable: give each value its own "
        "parameter (layers_1: 64, layers_2: 128) or a string (layers: '64,128')"
    )


def check_env_value(value: str) -> str:
    return check_text(value, max_chars=MAX_VALUE_CHARS, what="an environment value")


def check_tag_value(value: str) -> str:
    return check_text(value, max_chars=MAX_TAG_VALUE_CHARS, what="a tag")


# Names whose value the job's own shell needs, or that bash refuses or rewrites on its own.
_ENV_RESERVED_NAMES: Final = {
    "PATH": "it would replace the job's whole PATH, hpcops' own commands included, with a fixed "
    "value; extend it in the command instead, e.g. "
    "command: export PATH=/opt/tool/bin:$PATH && python train.py",
    "IFS": "it changes how the job's shell splits words",
    "ENV": "it names a file every shell of the job would run first; run it in the command instead",
    "SHELLOPTS": "bash keeps it read-only",
    "EUID": "bash keeps it read-only",
    "UID": "bash keeps it read-only",
    "PPID": "bash keeps it read-only",
    "_": "bash rewrites it after every command",
}
_ENV_RESERVED_PREFIXES: Final = {
    "SLURM_": "Slurm sets SLURM_* variables inside the job; choose another name",
    "HPCOPS_": "HPCOPS_* is hpcops' own (HPCOPS_RUN_ID, HPCOPS_PARAM_<NAME>, ...); put values in "
    "params to get HPCOPS_PARAM_<NAME>",
    "BASH": "bash sets BASH* variables itself, and BASH_ENV names a file every bash of the job "
    "would run first; run it in the command instead",
}


def check_env_key(value: str) -> str:
    ENV_KEY.check(value)
    if value in _ENV_RESERVED_NAMES:
        raise ValueError(f"cannot be set through env: {_ENV_RESERVED_NAMES[value]}")
    for prefix, why in _ENV_RESERVED_PREFIXES.items():
        if value.startswith(prefix):
            raise ValueError(f"cannot be set through env: {why}")
    return value


def check_mem(value: str | None) -> str | None:
    if value is None:
        return None
    example = "e.g. mem: 16G, mem: 512M or mem: 4096 (megabytes)"
    try:
        mb = parse_mem_mb(value)
    except ValueError as exc:
        raise ValueError(
            f"{exc}; got {show(value)}. Memory is a whole number with M, G or T, or a number "
            f"of megabytes; {example}"
        ) from None
    if mb == 0:
        raise ValueError(
            f"must be at least 1M; got {show(value)}. Slurm reads --mem=0 as 'all of a node's "
            f"memory', which hpcops does not offer: ask for a size, {example}"
        )
    if mb > MAX_MEM_MB:
        raise ValueError(f"must be at most 16T ({MAX_MEM_MB} MB); got {show(value)}; {example}")
    return value


def check_time(value: str) -> str:
    example = "e.g. time: '02:00:00' (2 hours), time: 90 (minutes) or time: '1-12:00:00'"
    upper = value.upper()
    if upper in {"UNLIMITED", "INFINITE"}:
        raise ValueError(f"must be at most 30 days (30-00:00:00); got {show(value)}; {example}")
    try:
        seconds = parse_slurm_time(value)
    except ValueError as exc:
        hint = ""
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*[hHmMdDsS].*", value):
            hint = " (units such as 'h' are not Slurm's: write 02:00:00 for 2h)"
        raise ValueError(f"{exc}{hint}; got {show(value)}; {example}") from None
    if seconds < 60:
        raise ValueError(f"must be at least 1 minute; got {show(value)}; {example}")
    if seconds > MAX_TIME_S:
        raise ValueError(
            f"must be at most 30 days (30-00:00:00); got {show(value)} "
            f"({seconds / 86400:.1f} days); {example}"
        )
    return value


def check_cron(value: str | None) -> str | None:
    if value is None:
        return None
    cadence.parse_cron(value)
    return " ".join(value.split())  # one space between fields, as `schedule ls` shows it


def check_timezone(value: str | None) -> str | None:
    return None if value is None else cadence.check_timezone(value)


def check_catch_up(value: str | None) -> str | None:
    return None if value is None else cadence.check_catch_up(value)


def optional_range(lo: int, hi: int, example: str) -> Callable[[int | None], int | None]:
    check = in_range(lo, hi, example)
    return lambda value: None if value is None else check(value)


# ─── sweeps ────────────────────────────────────────────────────────────────────────────────────

MAX_SWEEP_POINTS: Final = 10_000
MAX_SWEEP_PARALLEL: Final = 10_000
MAX_SWEEP_SEED: Final = 2**63 - 1  # it is stored with the sweep: SQLite's largest integer
DISTRIBUTIONS: Final = ("uniform", "loguniform", "randint", "choice")
RESOURCE_PREFIX: Final = "resources."

# MLflow's own rule for metric names: these characters, at most 250 of them.
_METRIC_RE = re.compile(r"[A-Za-z0-9_./ -]{1,250}")


def sweep_key(resource_fields: tuple[str, ...]) -> Callable[[str], str]:
    """A sweep key: a parameter name (`lr`) or `resources.<field>` for one of `resource_fields`."""
    example = "e.g. lr or resources.mem"

    def check(value: str) -> str:
        head, dot, rest = value.partition(".")
        if dot and head == "resources":
            if rest in resource_fields:
                return value
            close = closest(rest, resource_fields)
            hint = f" (did you mean resources.{close}?)" if close else ""
            raise ValueError(
                f"{show(rest)} is not a resource{hint}; a sweep can set "
                f"{', '.join(RESOURCE_PREFIX + f for f in resource_fields)}"
            )
        if dot and head == "params" and rest:
            raise ValueError(f"a sweep names a parameter without params.: write {show(rest)}")
        try:
            return PARAM_KEY.check(value)
        except ValueError as exc:
            raise ValueError(
                f"{exc}; a sweep key is a parameter name or resources.<field>, {example}"
            ) from None

    return check


def distribution_name(value: object) -> object:
    """A random sweep's distribution is a mapping with one known name: `{uniform: [0, 1]}`."""
    example = "e.g. lr: {loguniform: [1.0e-4, 1.0e-1]} or depth: {choice: [18, 34]}"
    allowed = ", ".join(DISTRIBUTIONS)
    if not isinstance(value, dict):
        raise ValueError(
            f"expected a mapping with one distribution ({allowed}); got {describe_value(value)}; "
            f"{example}"
        )
    if len(value) != 1:
        names = ", ".join(show(str(k)) for k in value) or "none"
        raise ValueError(
            f"needs exactly one distribution, one of {allowed}; got {names}; {example}"
        )
    [name] = value
    if name not in DISTRIBUTIONS:
        # closer than closest()'s cut-off: 'normal' is no misspelt 'uniform'
        close = difflib.get_close_matches(str(name).lower(), DISTRIBUTIONS, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown distribution {show(str(name))}{hint}; allowed: {allowed}; {example}"
        )
    return value


def check_metric(value: str) -> str:
    if not _METRIC_RE.fullmatch(value) or value.startswith("/") or value != value.strip():
        raise ValueError(
            "must be an MLflow metric name: letters, digits, '_', '-', '.', '/' and spaces, at "
            f"most 250 characters, e.g. val_accuracy; got {show(value)}"
        )
    return value


def count_text(n: int) -> str:
    """1,000,000 points; a count past a quadrillion is only said to be past it."""
    return f"{n:,}" if n <= 10**15 else "more than 1,000,000,000,000,000"


# ─── retries and checkpoints ───────────────────────────────────────────────────────────────────

# The endings of a job that may start a run's next attempt: those Slurm's sacct reports for a job
# that did not finish its work. COMPLETED and CANCELLED never do (a cancel is meant; a rerun or
# `hpcops retry RUN` starts a run again by hand).
RETRY_STATES: Final = ("NODE_FAIL", "PREEMPTED", "TIMEOUT", "FAILED", "OUT_OF_MEMORY")
MAX_ATTEMPTS: Final = 20
MAX_BACKOFF_S: Final = 86400
CHECKPOINT_SIGNALS: Final = ("USR1", "USR2")
MIN_CHECKPOINT_S: Final = 10
# sbatch --signal takes at most 65535 seconds (`man sbatch`, Slurm 22.05.8: sig_time).
MAX_CHECKPOINT_S: Final = 65535
_RETRY_EXAMPLE: Final = "e.g. on: [NODE_FAIL, PREEMPTED, TIMEOUT]"
_NOT_RETRIED: Final = {
    "COMPLETED": "a run that completed is done",
    "CANCELLED": "a cancel is meant to stop the run; `hpcops retry RUN` starts it again by hand",
}


def check_retry_state(value: str) -> str:
    """One item of `retry.on`: a Slurm job state a new attempt follows."""
    if value in RETRY_STATES:
        return value
    allowed = ", ".join(RETRY_STATES)
    upper = value.strip().upper().replace("-", "_").replace(" ", "_")
    if upper in RETRY_STATES:
        hint = f" (write {upper}, as sacct spells it)"
    elif upper in _NOT_RETRIED or upper == "CANCELED":
        hint = f" ({_NOT_RETRIED[upper.replace('CANCELED', 'CANCELLED')]})"
    else:
        close = closest(upper, RETRY_STATES)
        hint = f" (did you mean {close}?)" if close else ""
    raise ValueError(f"{show(value)} is not a state a run is retried on{hint}; allowed: {allowed}")


def check_retry_states(value: list[str]) -> list[str]:
    """`retry.on`: at least one state; a state given twice counts once."""
    if not value:
        raise ValueError(
            f"is empty; name the endings that start a new attempt, {_RETRY_EXAMPLE} "
            "(or remove retry: for a run that ends with its first attempt)"
        )
    return list(dict.fromkeys(value))


def check_checkpoint_signal(value: str) -> str:
    if value in CHECKPOINT_SIGNALS:
        return value
    bare = value.strip().upper().removeprefix("SIG")
    hint = f" (write {bare}, without SIG)" if bare in CHECKPOINT_SIGNALS else ""
    raise ValueError(
        f"must be USR1 or USR2{hint}; got {show(value)}. Slurm sends it to the job's script, "
        "which passes it on to the command; e.g. signal: USR1"
    )
