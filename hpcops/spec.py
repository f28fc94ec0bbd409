"""The experiment spec: what a lab member asks hpcops to run, read from untrusted YAML.

Reading a spec is a pipeline in which each step guards the next:

    bytes ─► size limit ─► UTF-8 ─► control characters ─► YAML events ─► plain data ─► Spec
                                                          (no anchors,    (str, int, float,
                                                           aliases or      bool, None, list,
                                                           tags)           dict; no duplicate
                                                                           keys)

Every problem becomes a `FieldProblem(location, message)` inside one `SpecError`; the location is
dotted (`resources.mem`, `params.lr`, `extra_directives[2]`) and the message says what is allowed,
usually with a valid example.

Plain YAML scalars are read with the YAML 1.2 core schema, not PyYAML's YAML 1.1 rules, because
1.1 quietly turns common spec values into something else: `time: 1:30:00` would be the base-60
integer 5400 (that is, 5400 minutes), `partition: on` the boolean true, `tag: 2024-01-01` a date
and `nodes: 010` the octal 8. Here they are the strings "1:30:00", "on", "2024-01-01" and the
integer 10. Only `true`/`false` are booleans and only `null`, `~` or nothing is null.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpcops.errors import FieldProblem, InvalidInput, SpecError
from hpcops.scheduling import timing

__all__ = [
    "MAX_SPEC_BYTES",
    "MODELLED_OPTIONS",
    "ParamValue",
    "Resources",
    "ScheduleBlock",
    "Spec",
    "extra_directive_problem",
    "load_spec_file",
    "parse_mem_mb",
    "parse_slurm_time",
    "parse_spec",
    "spec_to_yaml",
]

MAX_SPEC_BYTES: int = 1024 * 1024

ParamValue = str | int | float | bool

MINIMAL_SPEC: Final = "name: mnist-baseline\nexperiment: mnist\ncommand: python train.py\n"

MAX_TIME_S: Final = 30 * 24 * 3600
MAX_MEM_MB: Final = 16 * 1024 * 1024  # 16T: more than any node we know of has
MAX_COMMAND_BYTES: Final = 64 * 1024  # bash -c gets it as one argument; Linux caps one at 128 KiB
MAX_VALUE_CHARS: Final = 4096
MAX_TAG_VALUE_CHARS: Final = 256
MAX_PARAMS: Final = 200
MAX_ENV: Final = 200
MAX_TAGS: Final = 100
MAX_EXTRA_DIRECTIVES: Final = 32
MAX_WORKDIR_CHARS: Final = 4096
MAX_YAML_DEPTH: Final = 32
MAX_PROBLEMS: Final = 50

# ─── small pure parsers ────────────────────────────────────────────────────────────────────────

# sbatch(1) --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes" and "days-hours:minutes:seconds". The leading number may be large
# ("90" minutes, "48:00:00"); the ones after it are clock fields and must be < 60 (or < 24).
_TIME_RE = re.compile(
    r"(?P<days>[0-9]{1,4})-(?P<dh>[0-9]{1,2})(?::(?P<dm>[0-9]{1,2})(?::(?P<ds>[0-9]{1,2}))?)?"
    r"|(?P<a>[0-9]{1,7})(?::(?P<b>[0-9]{1,2})(?::(?P<c>[0-9]{1,2}))?)?"
)
TIME_FORMS: Final = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def parse_slurm_time(text: str) -> int:
    """Seconds in a Slurm time limit: `parse_slurm_time("1-02:03:04") == 93784`.

    Raises ValueError, with the accepted forms, for anything sbatch would not read the same way.
    No range check: `"0"` is 0 seconds. Slurm's `UNLIMITED`/`INFINITE` are refused.
    """
    m = _TIME_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a Slurm time limit; the forms are {TIME_FORMS}")
    g = m.groupdict()
    if g["days"] is not None:
        days, hours = int(g["days"]), int(g["dh"])
        minutes, seconds = int(g["dm"] or 0), int(g["ds"] or 0)
        if hours > 23:
            raise ValueError(f"hours after 'D-' must be 0 to 23, got {hours}")
    elif g["c"] is not None:  # HH:MM:SS
        days, hours, minutes, seconds = 0, int(g["a"]), int(g["b"]), int(g["c"])
    elif g["b"] is not None:  # MM:SS
        days, hours, minutes, seconds = 0, 0, int(g["a"]), int(g["b"])
    else:  # MM
        days, hours, minutes, seconds = 0, 0, int(g["a"]), 0
    if (g["days"] is not None or g["c"] is not None) and minutes > 59:
        raise ValueError(f"minutes after the hours must be 0 to 59, got {minutes}")
    if seconds > 59:
        raise ValueError(f"seconds must be 0 to 59, got {seconds}")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


_MEM_RE = re.compile(r"(?P<n>[0-9]{1,12})(?P<unit>[MmGgTt]?)")
_MEM_UNIT_MB: Final = {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_mem_mb(text: str) -> int:
    """Megabytes in a memory size: `parse_mem_mb("4G") == 4096`; a bare number is megabytes.

    Accepts what sbatch --mem accepts with M, G or T (any case). Raises ValueError with a hint for
    the usual slips ("4GB", "1.5G", "512K"). No range check: `"0"` is 0.
    """
    m = _MEM_RE.fullmatch(text)
    if m is not None:
        return int(m["n"]) * _MEM_UNIT_MB[m["unit"].upper()]
    hint = ""
    if re.fullmatch(r"[0-9]+[MGTmgt][Bb]", text):
        hint = f" (write {text[:-1]}, without the B)"
    elif re.fullmatch(r"[0-9]*\.[0-9]+[MGTmgt]?", text):
        hint = " (sizes are whole numbers: write 1536M rather than 1.5G)"
    elif re.fullmatch(r"[0-9]+[Kk][Bb]?", text):
        hint = " (the smallest unit here is M)"
    raise ValueError(f"not a memory size{hint}")


# ─── how values are described in messages ──────────────────────────────────────────────────────

_CHAR_NAMES: Final = {
    "\n": "a newline",
    "\r": "a carriage return",
    "\t": "a tab",
    " ": "a space",
    "'": "a quote (')",
    '"': 'a double quote (")',
    "`": "a backtick (`)",
    "$": "a dollar sign ($)",
    ";": "a semicolon (;)",
    "#": "a '#'",
    "\\": "a backslash (\\)",
    "\x00": "a NUL byte",
}

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators: none belongs
# in a spec value (YAML 1.1 even treats U+0085, U+2028 and U+2029 as line breaks).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The command is shell code: it may hold newlines and tabs, nothing else from that set.
_COMMAND_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# In the raw file: tab, LF and CR are YAML's own; everything else is refused before YAML sees it.
_FILE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


def _describe_char(ch: str) -> str:
    if ch in _CHAR_NAMES:
        return _CHAR_NAMES[ch]
    if _CONTROL_RE.match(ch):
        return f"the control character U+{ord(ch):04X}"
    if not ch.isascii():
        return f"the non-ASCII character {ch!r} (U+{ord(ch):04X})"
    return f"{ch!r}"


def _show(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _describe_value(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


# ─── field checks (each raises ValueError with the message a user sees) ────────────────────────


@dataclass(frozen=True)
class _Token:
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
                raise ValueError(f"contains {_describe_char(ch)} at position {i + 1}; {rule}")
        if not re.fullmatch(self.first, value[0]):
            raise ValueError(f"starts with {_describe_char(value[0])}; {rule}")
        raise ValueError(f"is {len(value)} characters long; {rule}")


_NAME = _Token(
    "a name",
    "[A-Za-z0-9]",
    "[A-Za-z0-9._-]",
    "letters, digits, '.', '_' or '-', starting with a letter or digit",
    64,
    "mnist-baseline",
)
_PARTITION = _Token(
    "a partition",
    "[A-Za-z0-9_]",
    "[A-Za-z0-9._-]",
    "letters, digits, '.', '_' or '-'",
    64,
    "gpu",
)
_QOS = _Token(
    "a QOS", "[A-Za-z0-9_]", "[A-Za-z0-9._-]", "letters, digits, '.', '_' or '-'", 64, "high"
)
_GPU_TYPE = _Token(
    "a GPU type",
    "[A-Za-z0-9]",
    "[A-Za-z0-9._-]",
    "letters, digits, '.', '_' or '-' (as in the cluster's gres.conf)",
    64,
    "a100",
)
_TEMPLATE = _Token(
    "a template name",
    "[a-z0-9]",
    "[a-z0-9_-]",
    "lower-case letters, digits, '_' or '-' (the file is <name>.sh.j2)",
    64,
    "default",
)
_PARAM_KEY = _Token(
    "a parameter name",
    "[A-Za-z_]",
    "[A-Za-z0-9_]",
    "letters, digits and '_', not starting with a digit (it becomes HPCOPS_PARAM_<NAME>)",
    64,
    "learning_rate",
)
_TAG_KEY = _Token(
    "a tag name",
    "[A-Za-z_]",
    "[A-Za-z0-9_]",
    "letters, digits and '_', not starting with a digit",
    64,
    "paper",
)
_ENV_KEY = _Token(
    "an environment variable name",
    "[A-Za-z_]",
    "[A-Za-z0-9_]",
    "letters, digits and '_', not starting with a digit",
    128,
    "OMP_NUM_THREADS",
)


def _check_partition(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > 256:
        raise ValueError(f"is {len(value)} characters long; at most 256")
    # sbatch takes a comma-separated list: the job starts in whichever partition frees first.
    for part in value.split(","):
        try:
            _PARTITION.check(part)
        except ValueError as exc:
            raise ValueError(f"{exc} (or a comma-separated list such as 'gpu,gpu-long')") from None
    return value


def _optional(token: _Token) -> Callable[[str | None], str | None]:
    def check(value: str | None) -> str | None:
        return None if value is None else token.check(value)

    return check


def _check_text(value: str, *, max_chars: int, what: str = "text") -> str:
    """Free text that must stay on one line: no control characters, bounded length."""
    bad = _CONTROL_RE.search(value)
    if bad:
        raise ValueError(
            f"contains {_describe_char(bad.group())} at position {bad.start() + 1}; "
            f"{what} must be on one line, without control characters"
        )
    if len(value) > max_chars:
        raise ValueError(f"is {len(value)} characters long; at most {max_chars}")
    return value


def _check_experiment(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; give the experiment the results are filed under, e.g. 'mnist'")
    _check_text(value, max_chars=100, what="an experiment name")
    if not value.isprintable():
        ch = next(c for c in value if not c.isprintable())
        raise ValueError(f"contains the unprintable character U+{ord(ch):04X}; e.g. 'mnist'")
    if value != value.strip():
        raise ValueError(f"has spaces at its start or end ({_show(value)}); e.g. 'mnist'")
    return value


def _check_command(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; e.g. command: python train.py --epochs 10")
    bad = _COMMAND_CONTROL_RE.search(value)
    if bad:
        line = value.count("\n", 0, bad.start()) + 1
        raise ValueError(
            f"contains {_describe_char(bad.group())} on its line {line}; a command may hold "
            "newlines and tabs but no other control characters"
        )
    size = len(value.encode("utf-8"))
    if size > MAX_COMMAND_BYTES:
        raise ValueError(
            f"is {size} bytes; at most {MAX_COMMAND_BYTES} (64 KiB). Put a long script in a file "
            "and run that, e.g. command: bash run.sh"
        )
    return value


def _check_workdir(value: str | None) -> str | None:
    if value is None:
        return None
    _check_text(value, max_chars=MAX_WORKDIR_CHARS, what="a path")
    if value.startswith("~"):
        raise ValueError(
            f"starts with '~', which hpcops does not expand; write the full path, "
            f"e.g. /home/ana/mnist (got {_show(value)})"
        )
    if not value.startswith("/") and ".." in Path(value).parts:
        raise ValueError(f"a path inside the checkout cannot go up with '..'; got {_show(value)}")
    return value


_URL_SCHEMES: Final = ("https://", "http://", "ssh://", "git://", "file://")
_SCP_LIKE_RE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")
_REV_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/~^-]{0,199}")
FULL_COMMIT_RE = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


def is_repo_url(value: str) -> bool:
    """A repository the cluster fetches itself (URL or user@host:path), not a local path."""
    return value.startswith(_URL_SCHEMES) or bool(_SCP_LIKE_RE.match(value))


def _check_repo(value: str) -> str:
    _check_text(value, max_chars=MAX_WORKDIR_CHARS, what="a path or URL")
    if not value or value.startswith("-"):
        raise ValueError(
            f"must be a git repository: a path such as /home/ana/mnist or '.', or a URL such as "
            f"https://github.com/lab/mnist.git; got {_show(value)}"
        )
    if "://" in value and not is_repo_url(value):
        raise ValueError(
            f"URL scheme not allowed; use one of {', '.join(s[:-3] for s in _URL_SCHEMES)} "
            f"(got {_show(value)})"
        )
    if value.startswith("~"):
        raise ValueError(
            f"starts with '~', which hpcops does not expand; write the full path "
            f"(got {_show(value)})"
        )
    if not is_repo_url(value) and not value.startswith("/"):
        raise ValueError(
            f"must be an absolute path or a URL; got {_show(value)} (a relative repo is resolved "
            "against the spec file's folder only when hpcops reads the file itself)"
        )
    return value


def _check_rev(value: str) -> str:
    if not _REV_RE.fullmatch(value) or ".." in value or value.endswith(("/", ".lock")):
        raise ValueError(
            "must be a commit id, a branch or a tag (letters, digits, '.', '_', '/', '-', '~', "
            f"'^'; no '..'), e.g. 'main' or '3f2a9c1'; got {_show(value)}"
        )
    return value


_DATA_PATH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/@+-]{0,1023}")
_DATA_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
MAX_DATA_TARGETS: Final = 16


def _check_data_path(value: str) -> str:
    """A path inside a repository (or the job's work directory): relative, never going up."""
    if (
        not _DATA_PATH_RE.fullmatch(value)
        or ".." in value.split("/")
        or "//" in value
        or value.endswith("/")
    ):
        raise ValueError(
            "must be a relative path of letters, digits and . _ / @ + - (no '..', no "
            f"leading or trailing '/'), e.g. data/mnist; got {_show(value)}"
        )
    return value


def _check_data_repo(value: str | None) -> str | None:
    if value is None:
        return None
    _check_repo(value)
    if not is_repo_url(value):
        raise ValueError(
            "must be a URL the cluster can fetch (https, ssh, git, file or user@host:path); data "
            f"in the run's own repository needs no repo (got {_show(value)})"
        )
    return value


def data_env_name(path: str) -> str:
    """HPCOPS_DATA_<NAME> for a target without a name: its last path part, in capitals."""
    base = re.sub(r"[^A-Za-z0-9]", "_", path.rsplit("/", 1)[-1]).upper().strip("_") or "DATA"
    return base if base[0].isalpha() else f"D_{base}"


def _optional_rev(value: str | None) -> str | None:
    return None if value is None else _check_rev(value)


def _optional_data_path(value: str | None) -> str | None:
    return None if value is None else _check_data_path(value)


def _optional_data_name(value: str | None) -> str | None:
    if value is not None and not _DATA_NAME_RE.fullmatch(value):
        raise ValueError(
            "must be capital letters, digits and '_', starting with a letter (the job gets "
            f"HPCOPS_DATA_<NAME>), e.g. MNIST; got {_show(value)}"
        )
    return value


def _range(lo: int, hi: int, example: str) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}; got {value} (e.g. {example})")
        return value

    return check


def _scalar_text(value: object) -> object:
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


def _int_as_text(value: object) -> object:
    """`mem: 4096` and `time: 90` are YAML integers; their fields hold the text Slurm reads."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_param_value(value: object) -> object:
    if isinstance(value, str):
        return _check_text(value, max_chars=MAX_VALUE_CHARS, what="a parameter value")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number; got {value!r}")
    if isinstance(value, bool | int | float):
        return value
    if value is None:
        raise ValueError("is empty (null); give it a value, or remove the line")
    raise ValueError(
        f"must be a string, a number or true/false; got {_describe_value(value)}. "
        "A list or mapping does not fit in one environment variable: give each value its own "
        "parameter (layers_1: 64, layers_2: 128) or a string (layers: '64,128')"
    )


def _check_env_value(value: str) -> str:
    return _check_text(value, max_chars=MAX_VALUE_CHARS, what="an environment value")


def _check_tag_value(value: str) -> str:
    return _check_text(value, max_chars=MAX_TAG_VALUE_CHARS, what="a tag")


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


def _check_env_key(value: str) -> str:
    _ENV_KEY.check(value)
    if value in _ENV_RESERVED_NAMES:
        raise ValueError(f"cannot be set through env: {_ENV_RESERVED_NAMES[value]}")
    for prefix, why in _ENV_RESERVED_PREFIXES.items():
        if value.startswith(prefix):
            raise ValueError(f"cannot be set through env: {why}")
    return value


def _check_mem(value: str | None) -> str | None:
    if value is None:
        return None
    example = "e.g. mem: 16G, mem: 512M or mem: 4096 (megabytes)"
    try:
        mb = parse_mem_mb(value)
    except ValueError as exc:
        raise ValueError(
            f"{exc}; got {_show(value)}. Memory is a whole number with M, G or T, or a number "
            f"of megabytes; {example}"
        ) from None
    if mb == 0:
        raise ValueError(
            f"must be at least 1M; got {_show(value)}. Slurm reads --mem=0 as 'all of a node's "
            f"memory', which hpcops does not offer: ask for a size, {example}"
        )
    if mb > MAX_MEM_MB:
        raise ValueError(f"must be at most 16T ({MAX_MEM_MB} MB); got {_show(value)}; {example}")
    return value


def _check_time(value: str) -> str:
    example = "e.g. time: '02:00:00' (2 hours), time: 90 (minutes) or time: '1-12:00:00'"
    upper = value.upper()
    if upper in {"UNLIMITED", "INFINITE"}:
        raise ValueError(f"must be at most 30 days (30-00:00:00); got {_show(value)}; {example}")
    try:
        seconds = parse_slurm_time(value)
    except ValueError as exc:
        hint = ""
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*[hHmMdDsS].*", value):
            hint = " (units such as 'h' are not Slurm's: write 02:00:00 for 2h)"
        raise ValueError(f"{exc}{hint}; got {_show(value)}; {example}") from None
    if seconds < 60:
        raise ValueError(f"must be at least 1 minute; got {_show(value)}; {example}")
    if seconds > MAX_TIME_S:
        raise ValueError(
            f"must be at most 30 days (30-00:00:00); got {_show(value)} "
            f"({seconds / 86400:.1f} days); {example}"
        )
    return value


# ─── extra_directives ──────────────────────────────────────────────────────────────────────────

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
                f"short options such as {_show(item.split()[0] if item.split() else item)} are "
                f"not accepted; use the long form, {_DIRECTIVE_EXAMPLE}"
            )
        return f"must start with '--'; {_DIRECTIVE_EXAMPLE}"
    option, eq, value = item[2:].partition("=")
    if not _OPTION_RE.fullmatch(option):
        bad = next((ch for ch in option if not re.fullmatch(r"[a-z0-9-]", ch)), None)
        if bad in {" ", "\t"} and not eq:
            return f"separate the value with '=' rather than a space; {_DIRECTIVE_EXAMPLE}"
        what = f"contains {_describe_char(bad)}" if bad else "is not a long option name"
        return (
            f"the option name {_show(option)} {what}; option names are lower-case letters, "
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
            f"the value contains {_describe_char(bad_char)}; values are letters, digits and "
            f"_ . , : = @ % / + - only (no spaces, quotes, $, `, ; or newlines); "
            f"{_DIRECTIVE_EXAMPLE}"
        )
    return None


def _check_extra_directive(item: str) -> str:
    problem = extra_directive_problem(item)
    if problem is not None:
        raise ValueError(problem)
    return item


def _check_extra_directives(items: list[str]) -> list[str]:
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


# ─── the models ────────────────────────────────────────────────────────────────────────────────

_ParamKey = Annotated[str, AfterValidator(_PARAM_KEY.check)]
_ParamVal = Annotated[ParamValue, BeforeValidator(_check_param_value)]
_EnvKey = Annotated[str, AfterValidator(_check_env_key)]
_EnvVal = Annotated[str, BeforeValidator(_scalar_text), AfterValidator(_check_env_value)]
_TagKey = Annotated[str, AfterValidator(_TAG_KEY.check)]
_TagVal = Annotated[str, BeforeValidator(_scalar_text), AfterValidator(_check_tag_value)]
_Directive = Annotated[str, AfterValidator(_check_extra_directive)]

_MODEL_CONFIG: Final = ConfigDict(extra="forbid", frozen=True, strict=True)


class Resources(BaseModel):
    """What the job asks Slurm for; each field is one #SBATCH directive, as in sbatch(1).

    partition: None means the lab config's default_partition. mem is per node, like --mem
    ("16G", "512M", or a number of megabytes); None leaves Slurm's default. gpus is per node
    (--gres=gpu[:gpu_type]:N). time is a Slurm time limit, 1 minute to 30 days.
    """

    model_config = _MODEL_CONFIG

    partition: Annotated[str | None, AfterValidator(_check_partition)] = None
    nodes: Annotated[int, AfterValidator(_range(1, 64, "nodes: 2"))] = 1
    ntasks: Annotated[int, AfterValidator(_range(1, 1024, "ntasks: 4"))] = 1
    cpus_per_task: Annotated[int, AfterValidator(_range(1, 256, "cpus_per_task: 8"))] = 1
    mem: Annotated[str | None, BeforeValidator(_int_as_text), AfterValidator(_check_mem)] = None
    gpus: Annotated[int, AfterValidator(_range(0, 16, "gpus: 1"))] = 0
    gpu_type: Annotated[str | None, AfterValidator(_optional(_GPU_TYPE))] = None
    time: Annotated[str, BeforeValidator(_int_as_text), AfterValidator(_check_time)] = "01:00:00"
    qos: Annotated[str | None, AfterValidator(_optional(_QOS))] = None

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type_needs_gpus(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("gpus") == 0:
            raise ValueError(
                f"names a GPU type but resources.gpus is 0; ask for GPUs too, e.g. gpus: 1 with "
                f"gpu_type: {value}"
            )
        return value

    @property
    def mem_mb(self) -> int | None:
        return None if self.mem is None else parse_mem_mb(self.mem)

    @property
    def time_limit_s(self) -> int:
        return parse_slurm_time(self.time)

    @property
    def time_limit_min(self) -> int:
        """What sbatch --time gets: Slurm counts whole minutes, so seconds round up."""
        return -(-self.time_limit_s // 60)


class DataTarget(BaseModel):
    """One DVC-tracked file or directory the job reads, staged onto scratch before it starts."""

    model_config = _MODEL_CONFIG

    path: Annotated[str, AfterValidator(_check_data_path)]
    repo: Annotated[str | None, AfterValidator(_check_data_repo)] = None
    rev: Annotated[str | None, AfterValidator(_optional_rev)] = None
    dest: Annotated[str | None, AfterValidator(_optional_data_path)] = None
    name: Annotated[str | None, AfterValidator(_optional_data_name)] = None

    @property
    def env_name(self) -> str:
        return f"HPCOPS_DATA_{self.name or data_env_name(self.path)}"

    @property
    def where(self) -> str:
        return self.dest or self.path


class Code(BaseModel):
    """The run's code: a git repository and the commit to check out into the run's directory."""

    model_config = _MODEL_CONFIG

    repo: Annotated[str, AfterValidator(_check_repo)]
    commit: Annotated[str, AfterValidator(_check_rev)] = "HEAD"

    @property
    def is_url(self) -> bool:
        return is_repo_url(self.repo)


def _check_cron(value: str | None) -> str | None:
    if value is None:
        return None
    timing.parse_cron(value)
    return " ".join(value.split())  # one space between fields, as `schedule ls` shows it


def _check_timezone(value: str | None) -> str | None:
    return None if value is None else timing.check_timezone(value)


def _check_catch_up(value: str | None) -> str | None:
    return None if value is None else timing.check_catch_up(value)


def _optional_range(lo: int, hi: int, example: str) -> Callable[[int | None], int | None]:
    check = _range(lo, hi, example)
    return lambda value: None if value is None else check(value)


class ScheduleBlock(BaseModel):
    """When `hpcops schedule add SPEC` queues the spec again: a cron expression (crontab's five
    fields, in `timezone`), an interval in seconds, or a change of its DVC-tracked data (checked
    every `check_every_s`). Options given on the command line win over the block. `hpcops
    submit` queues such a spec once and does not schedule it.
    """

    model_config = _MODEL_CONFIG

    cron: Annotated[str | None, AfterValidator(_check_cron)] = None
    every_s: Annotated[
        int | None, AfterValidator(_optional_range(1, timing.MAX_EVERY_S, "every_s: 3600"))
    ] = None
    timezone: Annotated[str | None, AfterValidator(_check_timezone)] = None
    name: Annotated[str | None, AfterValidator(_optional(_NAME))] = None
    catch_up: Annotated[str | None, AfterValidator(_check_catch_up)] = None
    catch_up_grace_s: Annotated[
        int | None, AfterValidator(_optional_range(0, 31 * 86400, "catch_up_grace_s: 3600"))
    ] = None
    allow_overlap: bool | None = None
    on_data_change: bool | None = None
    check_every_s: Annotated[
        int | None,
        AfterValidator(_optional_range(1, timing.MAX_EVERY_S, "check_every_s: 300")),
    ] = None

    @model_validator(mode="after")
    def _one_cadence(self) -> ScheduleBlock:
        given = [self.cron is not None, self.every_s is not None, bool(self.on_data_change)]
        if sum(given) != 1:
            raise ValueError(
                "needs exactly one of cron (e.g. cron: '0 3 * * 1'), every_s (e.g. every_s: "
                "3600) and on_data_change: true"
            )
        if self.check_every_s is not None and not self.on_data_change:
            raise ValueError(
                "check_every_s is how often an on_data_change schedule looks at its data; "
                "it needs on_data_change: true"
            )
        return self


class Spec(BaseModel):
    """One experiment: what to run, with which parameters, on what resources."""

    model_config = _MODEL_CONFIG

    name: Annotated[str, AfterValidator(_NAME.check)]
    experiment: Annotated[str, AfterValidator(_check_experiment)]
    command: Annotated[str, AfterValidator(_check_command)]
    code: Code | None = None
    workdir: Annotated[str | None, AfterValidator(_check_workdir)] = None
    data: list[DataTarget] = []
    staging: Literal["job", "inline"] | None = None
    params: dict[_ParamKey, _ParamVal] = {}
    env: dict[_EnvKey, _EnvVal] = {}
    resources: Resources = Resources()
    priority: Annotated[int, AfterValidator(_range(-1000, 1000, "priority: 10"))] = 0
    template: Annotated[str, AfterValidator(_TEMPLATE.check)] = "default"
    extra_directives: Annotated[list[_Directive], AfterValidator(_check_extra_directives)] = []
    tags: dict[_TagKey, _TagVal] = {}
    schedule: ScheduleBlock | None = None

    @field_validator("params")
    @classmethod
    def _params_fit_the_environment(cls, value: dict[str, ParamValue]) -> dict[str, ParamValue]:
        if len(value) > MAX_PARAMS:
            raise ValueError(f"has {len(value)} entries; at most {MAX_PARAMS}")
        seen: dict[str, str] = {}
        for key in value:
            upper = key.upper()
            if upper in seen:
                raise ValueError(
                    f"'{seen[upper]}' and '{key}' would both become the environment variable "
                    f"HPCOPS_PARAM_{upper}; rename one"
                )
            seen[upper] = key
        return value

    @field_validator("workdir")
    @classmethod
    def _relative_only_in_checkout(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Only when code is known to be absent: an invalid code block has its own message.
        no_code = "code" in info.data and info.data["code"] is None
        if value is not None and not value.startswith("/") and no_code:
            raise ValueError(
                f"must be an absolute path such as /home/ana/mnist; got {_show(value)} (a "
                "relative workdir is a folder of the checkout when the spec has code:, or is "
                "resolved against the spec file's folder when hpcops reads the file itself)"
            )
        return value

    @field_validator("data")
    @classmethod
    def _data_fits(cls, value: list[DataTarget], info: ValidationInfo) -> list[DataTarget]:
        if len(value) > MAX_DATA_TARGETS:
            raise ValueError(f"has {len(value)} targets; at most {MAX_DATA_TARGETS}")
        no_code = "code" in info.data and info.data["code"] is None
        names: dict[str, int] = {}
        places: dict[str, int] = {}
        for i, target in enumerate(value):
            if target.repo is None and no_code:
                raise ValueError(
                    f"[{i}] needs a repo: the spec has no code: whose repository it could come from"
                )
            if target.rev is not None and target.repo is None:
                raise ValueError(
                    f"[{i}].rev: data in the run's own repository is read at the run's commit; "
                    "a rev goes with a repo URL"
                )
            for seen, key, what in (
                (names, target.env_name, "variable"),
                (places, target.where, "dest"),
            ):
                if key in seen:
                    raise ValueError(
                        f"[{seen[key]}] and [{i}] have the same {what} {key}; give one a "
                        f"{'name' if what == 'variable' else 'dest'}"
                    )
                seen[key] = i
        return value

    @field_validator("env")
    @classmethod
    def _env_size(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENV:
            raise ValueError(f"has {len(value)} entries; at most {MAX_ENV}")
        return value

    @field_validator("tags")
    @classmethod
    def _tags_size(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_TAGS:
            raise ValueError(f"has {len(value)} entries; at most {MAX_TAGS}")
        return value


# ─── pydantic's errors in our words ────────────────────────────────────────────────────────────

_DICT_FIELDS: Final = {"params", "env", "tags"}
_EXAMPLES: Final = {
    "name": "name: mnist-baseline",
    "experiment": "experiment: mnist",
    "command": "command: python train.py --epochs 10",
    "workdir": "workdir: /home/ana/mnist",
    "code": "code: {repo: ., commit: HEAD}",
    "code.repo": "repo: /home/ana/mnist",
    "code.commit": "commit: main",
    "data": "data: [{path: data/mnist}]",
    "data.*": "- {path: data/mnist, dest: data/mnist}",
    "data.*.path": "path: data/mnist",
    "data.*.repo": "repo: https://github.com/lab/datasets.git",
    "data.*.rev": "rev: v2",
    "data.*.dest": "dest: data/mnist",
    "data.*.name": "name: MNIST",
    "staging": "staging: inline",
    "params": "params: {lr: 0.001, epochs: 10}",
    "params.*": "lr: 0.001",
    "env": "env: {OMP_NUM_THREADS: '8'}",
    "env.*": "OMP_NUM_THREADS: '8'",
    "resources": "resources: {cpus_per_task: 8, mem: 16G, time: '02:00:00'}",
    "resources.partition": "partition: gpu",
    "resources.nodes": "nodes: 2",
    "resources.ntasks": "ntasks: 4",
    "resources.cpus_per_task": "cpus_per_task: 8",
    "resources.mem": "mem: 16G",
    "resources.gpus": "gpus: 1",
    "resources.gpu_type": "gpu_type: a100",
    "resources.time": "time: '02:00:00'",
    "resources.qos": "qos: high",
    "priority": "priority: 10",
    "template": "template: default",
    "extra_directives": "extra_directives: ['--constraint=skylake']",
    "extra_directives.*": "- --constraint=skylake",
    "tags": "tags: {paper: neurips}",
    "tags.*": "paper: neurips",
    "schedule": "schedule: {cron: '0 3 * * 1', timezone: Europe/Berlin}",
    "schedule.cron": "cron: '0 3 * * 1'",
    "schedule.every_s": "every_s: 3600",
    "schedule.timezone": "timezone: Europe/Berlin",
    "schedule.name": "name: nightly-retrain",
    "schedule.catch_up": "catch_up: one",
    "schedule.catch_up_grace_s": "catch_up_grace_s: 3600",
    "schedule.allow_overlap": "allow_overlap: false",
    "schedule.on_data_change": "on_data_change: true",
    "schedule.check_every_s": "check_every_s: 300",
}
_EXPECTED: Final = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}
_MODELS: Final[dict[str, type[BaseModel]]] = {
    "": Spec,
    "resources": Resources,
    "code": Code,
    "data.*": DataTarget,
    "schedule": ScheduleBlock,
}
_SIMPLE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and not (i > 0 and loc[i - 1] in _DICT_FIELDS):
            text += f"[{part}]"
        elif isinstance(part, str) and _SIMPLE_KEY_RE.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _pattern(loc: tuple[int | str, ...]) -> str:
    """The _EXAMPLES key for a location: dict keys and list indexes become '*'."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        wild = isinstance(part, int) or (i > 0 and loc[i - 1] in _DICT_FIELDS)
        parts.append("*" if wild else str(part))
    return ".".join(parts)


def _unknown_field(parent: str, key: str) -> str:
    model = _MODELS.get(parent)
    allowed = list(model.model_fields) if model else []
    message = f"unknown field {key!r}"
    if parent == "" and key in Resources.model_fields:
        return f"{message}; {key} belongs under resources, e.g. resources: {{{key}: ...}}"
    if parent == "resources" and key in Spec.model_fields:
        return f"{message}; {key} belongs at the top level of the spec, not under resources"
    close = difflib.get_close_matches(key.replace("-", "_").lower(), allowed, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    if parent == "resources" and key in {"gres", "gpu", "gpus_per_node"}:
        message += " GPUs are asked for with gpus and gpu_type, e.g. gpus: 2, gpu_type: a100."
    elif parent == "" and key in {"account", "output", "error", "job_name", "job-name"}:
        message += " hpcops sets it itself."
    where = {"": "a spec", "data.*": "a data target"}.get(parent, parent)
    return f"{message} Allowed fields in {where}: {', '.join(allowed)}"


def _translate(error: Any) -> FieldProblem:
    loc = tuple(error["loc"])
    kind: str = error["type"]
    value = error.get("input")
    if loc and loc[-1] == "[key]":  # a dict key failed
        loc = loc[:-1]
        if kind == "string_type":
            return FieldProblem(
                _location(loc), f"keys must be strings; got {_describe_value(value)}"
            )
    where = _location(loc)
    pattern = _pattern(loc)
    example = _EXAMPLES.get(pattern)
    if kind == "value_error":
        return FieldProblem(where, str(error["ctx"]["error"]))
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return FieldProblem(where, f"must be one of {allowed}; got {_describe_value(value)}")
    if kind == "missing":
        return FieldProblem(where, f"is required; e.g. {example or MINIMAL_SPEC}")
    if kind == "extra_forbidden":
        return FieldProblem(where, _unknown_field(_pattern(loc[:-1]), str(loc[-1])))
    if kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}; got {_describe_value(value)}"
        if kind == "int_type" and isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
            message += " (write the number without quotes)"
        elif kind == "int_type" and isinstance(value, float) and value.is_integer():
            message += f" (write {int(value)})"
        elif kind == "string_type" and isinstance(value, bool):
            message += " (YAML reads true and false as booleans; quote it if you meant text)"
        elif kind == "string_type" and isinstance(value, int | float):
            message += f" (quote it: '{value}')"
        elif value is None:
            message += " (give it a value, or remove the line)"
        elif pattern in {"env.*", "tags.*"} and isinstance(value, list):
            message += " (one variable holds one string: write the items as one, e.g. '0,1')"
        if example:
            message += f"; e.g. {example}"
        return FieldProblem(where, message)
    return FieldProblem(where, str(error.get("msg", kind)))


def _validate(data: dict[str, object], source: str) -> Spec:
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        problems = [_translate(e) for e in exc.errors(include_url=False)]
        raise SpecError(source, problems[:MAX_PROBLEMS]) from None


# ─── YAML, read defensively ────────────────────────────────────────────────────────────────────

_YAML_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)

# The YAML 1.2 core schema for plain scalars (see the module docstring).
_NULL_RE = re.compile(r"~|null|Null|NULL|")
_BOOL: Final = {s: s[0] in "tT" for s in ("true", "True", "TRUE", "false", "False", "FALSE")}
_INT_RE = re.compile(r"[-+]?[0-9]{1,64}")
_FLOAT_RE = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)


def _plain_scalar(text: str) -> ParamValue | None:
    if _NULL_RE.fullmatch(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        # YAML writes infinity and not-a-number as .inf and .nan; Python reads inf and nan.
        special = text.lstrip("+-").lower() in {".inf", ".nan"}
        return float(text.replace(".", "") if special else text)
    return text


class _Mark(Protocol):
    line: int
    column: int


def _where(mark: _Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


class _Refused(InvalidInput):
    """The YAML uses a feature a spec may not; stops reading at once."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.problem = FieldProblem(_location(loc), message)


@dataclass
class _Frame:
    path: tuple[int | str, ...]
    value: dict[str, object] | list[object]
    key: str | None = None  # a mapping's key waiting for its value
    key_line: dict[str, int] = field(default_factory=dict)
    bad_key: bool = False  # the pending key was refused; drop the value that follows it
    as_key: bool = False  # this collection is itself a mapping key (refused)


class _PlainDataBuilder:
    """Turns parser events into plain Python data, refusing what a spec must not contain.

    Works on events so that an alias is refused before anything is built from it (the
    "billion laughs" document is a few hundred bytes of nested aliases), and so that duplicate
    keys and non-string keys are reported with the path they are at.
    """

    def __init__(self) -> None:
        self.stack: list[_Frame] = []
        self.root: object = None
        self.documents = 0
        self.problems: list[FieldProblem] = []

    def child_path(self) -> tuple[int | str, ...]:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.value, list):
            return (*top.path, len(top.value))
        return (*top.path, top.key) if top.key is not None else top.path

    def feed(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise _Refused(
                    (),
                    f"a second YAML document starts at {_where(event.start_mark)}; a spec file "
                    "holds one document (remove the extra '---')",
                )
            return
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            sign = "*" if kind == "alias" else "&"
            raise _Refused(
                self.child_path(),
                f"YAML {kind} '{sign}{event.anchor}' at {_where(event.start_mark)}: anchors and "
                "aliases are not allowed in a spec; write each value out in full",
            )
        tag = getattr(event, "tag", None)
        if isinstance(event, yaml.ScalarEvent | yaml.CollectionStartEvent) and tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise _Refused(
                self.child_path(),
                f"YAML tag '{shown}' at {_where(event.start_mark)}: tags are not allowed in a "
                "spec; write plain values (quote a string if YAML would read it as something "
                "else)",
            )
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            if len(self.stack) >= MAX_YAML_DEPTH:
                raise _Refused(
                    self.child_path()[:2],
                    f"nesting deeper than {MAX_YAML_DEPTH} levels at "
                    f"{_where(event.start_mark)}; a spec needs three at most",
                )
            as_key = bool(self.stack) and self._expects_key()
            container: dict[str, object] | list[object] = (
                {} if isinstance(event, yaml.MappingStartEvent) else []
            )
            self.stack.append(_Frame(self.child_path(), container, as_key=as_key))
            if as_key:
                where = _where(event.start_mark)
                message = f"a mapping key at {where} is a list or mapping; keys must be strings"
                self.problem(self.stack[-1].path, message)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            frame = self.stack.pop()
            if frame.as_key:
                self.stack[-1].bad_key = True  # drop the value that goes with the refused key
            else:
                self.add(frame.value, event)
        elif isinstance(event, yaml.ScalarEvent):
            plain = event.implicit[0]
            value = _plain_scalar(event.value) if plain else event.value
            self.add(value, event)

    def _expects_key(self) -> bool:
        top = self.stack[-1]
        return isinstance(top.value, dict) and top.key is None and not top.bad_key

    def add(self, value: object, event: yaml.Event) -> None:
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
            return
        if top.bad_key:  # the value of a refused key
            top.bad_key = False
            return
        if top.key is None:  # this scalar is a key
            line = event.start_mark.line + 1 if event.start_mark else 0
            if not isinstance(value, str):
                top.bad_key = True
                shown = "null" if value is None else str(value).lower()
                self.problem(
                    top.path,
                    f"the key {shown} at line {line} is read as {_describe_value(value)}; keys "
                    f"must be strings: quote it, '{shown}'",
                )
                return
            if value in top.key_line:
                top.bad_key = True
                self.problem(
                    (*top.path, value),
                    f"duplicate key {value!r} (lines {top.key_line[value]} and {line}); YAML "
                    "would silently keep only the last value: remove one",
                )
                return
            top.key, top.key_line[value] = value, line
            return
        top.value[top.key] = value
        top.key = None

    def problem(self, loc: tuple[int | str, ...], message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(FieldProblem(_location(loc), message))


def _yaml_problem(exc: yaml.YAMLError, text: str) -> FieldProblem:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return FieldProblem("", f"not valid YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    message = f"not valid YAML at {_where(mark)}: {exc.problem or exc.context or 'unreadable'}"
    if exc.context and exc.problem:
        message += f" ({exc.context})"
    if mark is not None:
        lines = text.splitlines()
        line = lines[mark.line] if mark.line < len(lines) else ""
        if "\t" in line[: mark.column + 1]:
            message += "; YAML indents with spaces, not tabs"
    return FieldProblem("", message)


def _read_yaml(text: str) -> object:
    """Plain data from YAML text; None for a stream without a document."""
    builder = _PlainDataBuilder()
    events: Iterator[yaml.Event] = yaml.parse(text, Loader=_YAML_LOADER)
    for event in events:
        builder.feed(event)
    if builder.problems:
        raise _ProblemsFound(builder.problems)
    return builder.root if builder.documents else None


class _ProblemsFound(InvalidInput):
    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__(f"{len(problems)} problems")
        self.problems = problems

    @classmethod
    def one(cls, message: str) -> _ProblemsFound:
        return cls([FieldProblem("", message)])


def _check_file_text(text: str) -> str | None:
    bad = _FILE_CONTROL_RE.search(text)
    if bad is None:
        return None
    line = text.count("\n", 0, bad.start()) + 1
    column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
    offset = len(text[: bad.start()].encode("utf-8"))
    return (
        f"{_describe_char(bad.group())} at line {line}, column {column} (byte offset {offset}); "
        "a spec is a text file, and control characters have no place in one"
    )


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        if len(data) > MAX_SPEC_BYTES:  # each character is at least one byte
            raise _ProblemsFound.one(_too_big(len(data.encode("utf-8", "surrogatepass"))))
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _ProblemsFound.one(
                f"the text holds an unpaired surrogate at character {exc.start}; not Unicode"
            ) from None
    if len(data) > MAX_SPEC_BYTES:
        raise _ProblemsFound.one(_too_big(len(data)))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _ProblemsFound.one(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            f"({exc.reason}); a spec is a UTF-8 YAML file, is this a binary file?"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write


def _too_big(size: int, more: str = "") -> str:
    return (
        f"the spec is {more}{size} bytes; the limit is {MAX_SPEC_BYTES} bytes (1 MiB). Keep "
        "data and long scripts in files the command reads"
    )


def _plain_data(data: bytes | str) -> dict[str, object]:
    """The spec's YAML as plain data, every reason to refuse it raised as _ProblemsFound."""
    text = _decode(data)
    bad = _check_file_text(text)
    if bad is not None:
        raise _ProblemsFound.one(bad)
    try:
        root = _read_yaml(text)
    except _Refused as exc:
        raise _ProblemsFound([exc.problem]) from None
    except yaml.YAMLError as exc:
        raise _ProblemsFound([_yaml_problem(exc, text)]) from None
    if root is None:
        what = "empty" if not text.strip() else "empty (it holds only comments or null)"
        raise _ProblemsFound.one(f"the spec is {what}; a minimal spec is:\n{_indent(MINIMAL_SPEC)}")
    if not isinstance(root, dict):
        raise _ProblemsFound.one(
            f"the spec must be a YAML mapping of fields; got {_describe_value(root)}. "
            f"A minimal spec is:\n{_indent(MINIMAL_SPEC)}"
        )
    return root


def _indent(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.splitlines())


def _parse(data: bytes | str, source: str, base_dir: Path | None) -> Spec:
    try:
        plain = _plain_data(data)
    except _ProblemsFound as exc:
        raise SpecError(source, exc.problems) from None
    code = plain.get("code")
    if base_dir is not None and isinstance(code, dict):
        # With code, the workdir is a folder of the checkout; only the repo is the file's.
        repo = code.get("repo")
        if _is_relative_text(repo):
            code["repo"] = os.path.normpath(base_dir / str(repo))
    elif base_dir is not None:
        workdir = plain.get("workdir")
        if workdir is None:
            plain["workdir"] = str(base_dir)
        elif _is_relative_text(workdir):
            plain["workdir"] = str(base_dir / str(workdir))
    return _validate(plain, source)


def _is_relative_text(value: object) -> bool:
    """A relative path that validation would otherwise accept (left alone if it is bad)."""
    return (
        isinstance(value, str)
        and bool(value)
        and not value.startswith(("/", "~", "-"))
        and not is_repo_url(value)
        and "://" not in value
        and not _CONTROL_RE.search(value)
    )


def parse_spec(data: bytes | str, source: str) -> Spec:
    """A validated Spec from YAML text or bytes; `source` names it in messages (a path, "-").

    Raises SpecError, and nothing else, for any input. A relative workdir is refused here: only
    load_spec_file knows what it is relative to.
    """
    try:
        return _parse(data, source, None)
    except SpecError:
        raise
    except Exception as exc:  # a bug of ours must still come out as the promised error
        raise SpecError(source, [FieldProblem("", f"could not be read: {exc!r}")]) from exc


def load_spec_file(path: str | Path) -> Spec:
    """Read and validate a spec file.

    A relative workdir is resolved against the spec file's folder, and a spec without one runs
    there. Reads at most MAX_SPEC_BYTES + 1 bytes, so a huge file costs no memory.
    """
    source = os.fspath(path)
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        problem = FieldProblem("", f"cannot read the spec file: {exc.strerror or exc}")
        raise SpecError(source, [problem]) from None
    if len(data) > MAX_SPEC_BYTES:  # a pipe or device reports no size: say "more than"
        shown = _too_big(size) if size > MAX_SPEC_BYTES else _too_big(len(data), "more than ")
        raise SpecError(source, [FieldProblem("", shown)])
    base_dir = Path(path).absolute().parent
    try:
        return _parse(data, source, base_dir)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(source, [FieldProblem("", f"could not be read: {exc!r}")]) from exc


# ─── canonical YAML ────────────────────────────────────────────────────────────────────────────


# libyaml's emitter when PyYAML has it (about 5x faster); resolvers and representers stay ours.
_DUMPER_BASE: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _CanonicalDumper(_DUMPER_BASE):  # type: ignore[valid-type,misc]
    """Quotes every string that our reader, or a YAML 1.1 reader, would take for non-text."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012  # its own table, not the shared one


for _tag, _regexp in (
    ("tag:yaml.org,2002:null", _NULL_RE),
    ("tag:yaml.org,2002:bool", re.compile("|".join(_BOOL))),
    ("tag:yaml.org,2002:int", _INT_RE),
    ("tag:yaml.org,2002:float", _FLOAT_RE),
):
    _CanonicalDumper.add_implicit_resolver(
        _tag, re.compile(f"^(?:{_regexp.pattern})$"), [*"~nNtTfF-+0123456789.", ""]
    )
for _first, _resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        _CanonicalDumper.add_implicit_resolver(_tag, _regexp, [_first])


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CanonicalDumper.add_representer(str, _represent_str)


def spec_to_yaml(spec: Spec) -> str:
    """The spec as canonical YAML, every field written out, that parse_spec reads back equal."""
    data = spec.model_dump(mode="python")
    if data.get("schedule") is None:
        # Absent unless given, so a spec without one keeps its canonical text and hash.
        data.pop("schedule", None)
    return yaml.dump(
        data,
        Dumper=_CanonicalDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1_000_000,
    )
