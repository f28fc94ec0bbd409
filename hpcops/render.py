"""sbatch scripts from jinja2 templates: a spec and a submission's context in, a script out.

Two kinds of value reach a script, and each is made safe in its own way:

- Values on `#SBATCH` lines are not shell-quoted, because sbatch reads those lines with its own
  small parser, not a shell. Instead every directive value is checked against a strict regex
  before rendering (`sbatch_directives`), and after rendering every `#SBATCH` line the script
  carries is checked again, so a lab template cannot slip an unchecked one in.
- Values in shell code go through the `shquote` filter (shlex.quote). The one exception is the
  spec's command, which is shell code by design; the template explains how it is embedded.

Lab templates come from config, so they run in jinja2's immutable sandbox.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

import jinja2
import jinja2.sandbox

from hpcops.config_sections import passthrough_problem
from hpcops.errors import ConfigError, FieldProblem, SpecError
from hpcops.names import FULL_COMMIT_RE, NAME_PATTERN, SLURM_NAME_PATTERN
from hpcops.rundir import RunDir
from hpcops.spec import MODELLED_OPTIONS, ParamValue, Spec, extra_directive_problem, sets_signal

__all__ = [
    "BUILTIN_TEMPLATE_DIR",
    "CHECKPOINT_DIR",
    "JobContext",
    "checkpoint_dir",
    "job_name",
    "render_script",
    "sbatch_directives",
]

_PACKAGE_DIR = Path(__file__).resolve().parent


def _builtin_template_dir() -> Path:
    # An installed wheel carries the templates inside the package (pyproject's force-include);
    # a checkout keeps them at the top of the repository, next to the lab configs.
    for candidate in (_PACKAGE_DIR / "sbatch_templates", _PACKAGE_DIR.parent / "sbatch_templates"):
        if candidate.is_dir():
            return candidate
    return _PACKAGE_DIR.parent / "sbatch_templates"


BUILTIN_TEMPLATE_DIR: Path = _builtin_template_dir()
TEMPLATE_SUFFIX: Final = ".sh.j2"

_RUN_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_TOKEN_RE = re.compile(r"[0-9a-f]{8,64}")
_LAB_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MLFLOW_VAR_RE = re.compile(r"MLFLOW_[A-Z_]{1,64}")
PIPELINE_VAR_RE = re.compile(r"HPCOPS_(PIPELINE|PIPELINE_ID|STEP|(AFTER|INPUT)_[A-Z0-9_]{1,160})")


@dataclass(frozen=True)
class CodeCheckout:
    """The commit a job checks out into <run_dir>/src, from the objects of the lab's mirror."""

    objects: str  # the mirror's object directory, used as an alternate: nothing is copied
    commit: str

    def __post_init__(self) -> None:
        if not FULL_COMMIT_RE.fullmatch(self.commit):
            raise ValueError(f"CodeCheckout.commit {self.commit!r} is not a full commit id")
        if not self.objects.startswith("/"):
            raise ValueError(f"CodeCheckout.objects {self.objects!r} must be absolute")


@dataclass(frozen=True)
class StagingStep:
    """How the run's data is staged: `python -m hpcops.data.stage PLAN`, by the job itself before
    its command (inline), or by a staging job of its own that the job depends on."""

    python: str
    plan: str
    inline: bool = True


@dataclass(frozen=True)
class StagingJob:
    """What the staging job asks Slurm for (the config's data.staging_job)."""

    partition: str | None
    qos: str | None
    cpus: int
    mem_mb: int
    time_min: int


@dataclass(frozen=True)
class JobContext:
    """What the daemon knows about one submission attempt that the spec does not say."""

    run_id: str  # "r-000042"
    token: str  # hex, unique per submission attempt; sbatch --comment=hpcops:<token>
    run_dir: RunDir
    account: str | None  # the lab's Slurm account (-A); None: no directive
    default_partition: str | None  # for specs that name none; None: Slurm's default
    lab: str
    code: CodeCheckout | None = None  # with a spec's code: the commit to check out
    staging: StagingStep | None = None  # with a spec's data: how the job stages it
    after: str | None = None  # the staging job's id: the job starts only after it succeeded
    # The MLflow run the job logs into (MLFLOW_TRACKING_URI, MLFLOW_RUN_ID, ...), exported
    # quoted like every value; empty when the run is not tracked (hpcops/tracking).
    mlflow_env: tuple[tuple[str, str], ...] = ()
    # The daemon's own variables that jobs get (config jobs.env_passthrough), with its values,
    # read when the script is rendered. The job starts without the daemon's environment
    # (--export=NONE); its script exports these first, then what hpcops sets.
    passthrough_env: tuple[tuple[str, str], ...] = ()
    # Which attempt of the run this job is, from 1 (HPCOPS_ATTEMPT); a Slurm requeue of the
    # same job stays the same attempt.
    attempt: int = 1
    # A pipeline step's: its pipeline and step, and what the steps it waits for left it
    # (HPCOPS_PIPELINE*, HPCOPS_STEP, HPCOPS_AFTER_*, HPCOPS_INPUT_*; engine/pipelines.py).
    pipeline_env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # The daemon makes these; a bad one is a bug, not a user's mistake.
        for name, value, pattern in (
            ("run_id", self.run_id, _RUN_ID_RE),
            ("token", self.token, _TOKEN_RE),
            ("lab", self.lab, _LAB_RE),
        ):
            if not pattern.fullmatch(value):
                raise ValueError(f"JobContext.{name} {value!r} must match {pattern.pattern}")
        for var, _ in self.mlflow_env:
            if not _MLFLOW_VAR_RE.fullmatch(var):
                raise ValueError(f"JobContext.mlflow_env: {var!r} is not an MLFLOW_ variable")
        for var, _ in self.passthrough_env:
            problem = passthrough_problem(var)
            if problem is not None:  # the config refused it already: a second line of defence
                raise ValueError(f"JobContext.passthrough_env: {problem}")
        for var, _ in self.pipeline_env:
            if not PIPELINE_VAR_RE.fullmatch(var):
                raise ValueError(f"JobContext.pipeline_env: {var!r} is not a pipeline variable")
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 1:
            raise ValueError(f"JobContext.attempt {self.attempt!r} must be an integer >= 1")


# The run's checkpoint directory, in its run directory: every attempt of the run gets the same
# one (HPCOPS_CHECKPOINT_DIR), because a new attempt reuses the run directory and the script
# only ever creates it.
CHECKPOINT_DIR: Final = "checkpoint"


def checkpoint_dir(ctx: JobContext) -> str:
    return str(ctx.run_dir.path / CHECKPOINT_DIR)


def checkpoint_wait_s(spec: Spec) -> int:
    """The longest a job whose command saved its checkpoint and ended waits for Slurm to end it
    at its time limit: the whole limit and 10 minutes more. Slurm checks limits every 30 s or so
    (on the dev cluster a 1-minute job was ended 77 s after it started) and may be configured to
    let a job overrun by OverTimeLimit minutes; a wait that ran out would end the job COMPLETED."""
    return spec.resources.time_limit_s + 600


def job_name(spec: Spec, ctx: JobContext) -> str:
    """What sbatch --job-name gets: the spec's name, which squeue and sacct show to people."""
    return spec.name


# ─── #SBATCH directives ────────────────────────────────────────────────────────────────────────

_NAME = NAME_PATTERN
_SLURM_NAME = SLURM_NAME_PATTERN
_COUNT = r"[1-9][0-9]{0,5}"
# sbatch --output/--error take the path unquoted, and expand %-patterns (%j, %x, ...) and a
# backslash in it: a run directory must do without spaces, quotes, '%' and '\'.
_PATH_RE = re.compile(r"/[A-Za-z0-9._/+-]*")
_EXTRA_VALUE = r"[A-Za-z0-9_.,:=@%/+-]{1,200}"

# One regex per directive hpcops writes: the whole value must match.
DIRECTIVE_VALUE_RE: Final[dict[str, re.Pattern[str]]] = {
    option: re.compile(pattern)
    for option, pattern in {
        "job-name": _NAME,
        "comment": r"hpcops:[0-9a-f]{8,64}",
        "output": _PATH_RE.pattern,
        "error": _PATH_RE.pattern,
        "export": r"NONE",
        "account": _SLURM_NAME,
        "partition": rf"{_SLURM_NAME}(?:,{_SLURM_NAME}){{0,15}}",
        "nodes": _COUNT,
        "ntasks": _COUNT,
        "cpus-per-task": _COUNT,
        "mem": r"[1-9][0-9]{0,9}M",
        "gres": rf"gpu(?::{_NAME})?:[1-9][0-9]?",
        "time": _COUNT,
        "qos": _SLURM_NAME,
        "dependency": r"afterok:[0-9]{1,12}",
        "kill-on-invalid-dep": r"yes",
        # checkpoint: the signal to the batch shell only (B:), before_s 10..65535 seconds
        "signal": r"B:USR[12]@(?:[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
        r"|655[0-2][0-9]|6553[0-5])",
    }.items()
}
_EXTRA_OPTION_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")
_EXTRA_VALUE_RE = re.compile(_EXTRA_VALUE)
_SBATCH_LINE_RE = re.compile(rf"#SBATCH --([a-z][a-z0-9-]{{0,63}})(?:=({_EXTRA_VALUE}))?")

# Where a bad directive value came from, for the error.
_SPEC_FIELD: Final = {
    "job-name": "name",
    "partition": "resources.partition",
    "nodes": "resources.nodes",
    "ntasks": "resources.ntasks",
    "cpus-per-task": "resources.cpus_per_task",
    "mem": "resources.mem",
    "gres": "resources.gpu_type",
    "time": "resources.time",
    "qos": "resources.qos",
    "signal": "checkpoint",
}


def _source(spec: Spec, ctx: JobContext) -> str:
    return f"spec {spec.name!r} (run {ctx.run_id})"


def sbatch_directives(spec: Spec, ctx: JobContext) -> list[tuple[str, str | None]]:
    """The job's #SBATCH options in order, as (option without '--', value or None) pairs.

    Pure. Every value is checked against its regex; a bad one raises SpecError naming the spec
    field, or ConfigError naming the config setting it came from.
    """
    r = spec.resources
    partition = r.partition if r.partition is not None else ctx.default_partition
    pairs: list[tuple[str, str | None, str]] = [  # option, value, where the value came from
        ("job-name", job_name(spec, ctx), "name"),
        ("comment", f"hpcops:{ctx.token}", "token"),
        ("output", str(ctx.run_dir.stdout), "run_root"),
        ("error", str(ctx.run_dir.stderr), "run_root"),
        # None of the daemon's environment: the script exports what the job gets (_exports).
        ("export", "NONE", "export"),
    ]
    if ctx.account is not None:
        pairs.append(("account", ctx.account, "account"))
    if partition is not None:
        where = "resources.partition" if r.partition is not None else "default_partition"
        pairs.append(("partition", partition, where))
    pairs += [
        ("nodes", str(r.nodes), "resources.nodes"),
        ("ntasks", str(r.ntasks), "resources.ntasks"),
        ("cpus-per-task", str(r.cpus_per_task), "resources.cpus_per_task"),
    ]
    if r.mem_mb is not None:
        pairs.append(("mem", f"{r.mem_mb}M", "resources.mem"))
    if r.gpus > 0:
        gres = f"gpu:{r.gpu_type}:{r.gpus}" if r.gpu_type else f"gpu:{r.gpus}"
        pairs.append(("gres", gres, "resources.gpu_type" if r.gpu_type else "resources.gpus"))
    pairs.append(("time", str(r.time_limit_min), "resources.time"))
    if r.qos is not None:
        pairs.append(("qos", r.qos, "resources.qos"))
    if spec.checkpoint is not None:
        # To the batch shell only: the script passes it on to the command (sbatch_templates).
        signal = f"B:{spec.checkpoint.signal}@{spec.checkpoint.before_s}"
        pairs.append(("signal", signal, "checkpoint"))
    if ctx.after is not None:
        # Staged data first; if staging fails, Slurm ends this job instead of keeping it.
        pairs.append(("dependency", f"afterok:{ctx.after}", "staging"))
        pairs.append(("kill-on-invalid-dep", "yes", "staging"))

    directives: list[tuple[str, str | None]] = []
    for option, value, where in pairs:
        if value is None or not DIRECTIVE_VALUE_RE[option].fullmatch(value):
            _bad_value(spec, ctx, option, value, where)
        directives.append((option, value))
    for i, item in enumerate(spec.extra_directives):
        option, eq, value = item.removeprefix("--").partition("=")
        problem = extra_directive_problem(item)
        if problem is None and not (
            item.startswith("--")
            and _EXTRA_OPTION_RE.fullmatch(option)
            and (not eq or _EXTRA_VALUE_RE.fullmatch(value))
        ):
            problem = "is not of the form --option or --option=value"
        if problem is None and spec.checkpoint is not None and sets_signal(item):
            problem = "sets --signal, which checkpoint: sets; remove one of the two"
        if problem is not None:
            raise SpecError(_source(spec, ctx), [FieldProblem(f"extra_directives[{i}]", problem)])
        directives.append((option, value if eq else None))
    return directives


def _bad_value(spec: Spec, ctx: JobContext, option: str, value: str | None, where: str) -> NoReturn:
    shown = repr(value)
    if where == "run_root":
        raise ConfigError(
            f"run directory {str(ctx.run_dir.path)!r} cannot go on an #SBATCH --{option} line: "
            "sbatch takes that path unquoted and expands '%' and '\\' in it. Set run_root in the "
            "lab config to an absolute path made of letters, digits and . _ - + / only, e.g. "
            "/scratch/vision-lab/hpcops/runs"
        )
    if where in {"account", "default_partition"}:
        raise ConfigError(
            f"the lab config's {where} {shown} cannot go on an #SBATCH --{option} line; it must "
            "be letters, digits, '.', '_' or '-', e.g. vision-lab"
        )
    if where == "token":
        raise ValueError(f"JobContext.token {ctx.token!r} is not hex")
    raise SpecError(
        _source(spec, ctx),
        [FieldProblem(where, f"{shown} cannot go on an #SBATCH --{option} line")],
    )


def directive_line(option: str, value: str | None) -> str:
    return f"#SBATCH --{option}" if value is None else f"#SBATCH --{option}={value}"


def _header_problems(script: str, expected: Sequence[tuple[str, str | None]]) -> list[str]:
    """What is wrong with a rendered script's #SBATCH lines; empty when nothing is.

    sbatch reads #SBATCH lines up to the first line that is neither blank nor a comment. Each
    expected directive must be there exactly once, and any other #SBATCH line there (a lab
    template's fixed one) must be well formed and must not set an option hpcops controls.
    """
    problems: list[str] = []
    header: list[str] = []
    for line in script.split("\n"):
        if line.strip() and not line.lstrip().startswith("#"):
            break
        header.append(line)
    wanted = {directive_line(o, v) for o, v in expected}
    counts = dict.fromkeys(wanted, 0)
    controlled = {o for o, _ in expected} | set(MODELLED_OPTIONS)
    for number, line in enumerate(header, start=1):
        stripped = line.lstrip()
        if stripped.startswith("#PBS"):
            problems.append(f"line {number} is a #PBS line, which sbatch also obeys: {line!r}")
        if not stripped.startswith("#SBATCH"):
            continue
        if line in counts:
            counts[line] += 1
            continue
        m = _SBATCH_LINE_RE.fullmatch(line)
        if m is None:
            problems.append(f"line {number} is not a well-formed #SBATCH line: {line[:80]!r}")
        elif any(c.startswith(m[1]) for c in controlled):
            problems.append(f"line {number} sets --{m[1]}, which hpcops controls: {line!r}")
    for line, count in counts.items():
        if count != 1:
            problems.append(f"{line!r} appears {count} times before the first command; once needed")
    return problems


# ─── the script ────────────────────────────────────────────────────────────────────────────────


def _env_text(value: ParamValue) -> str:
    """A parameter as its environment variable holds it: YAML's spelling for booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _shquote(value: object) -> str:
    if isinstance(value, str | int | float):
        return shlex.quote(_env_text(value))
    raise TypeError(f"shquote takes a string or a number, not {type(value).__name__}")


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _exports(spec: Spec, ctx: JobContext) -> list[tuple[str, str]]:
    """Every variable the job's script exports: the daemon's allow-listed ones, then hpcops'
    own, then the spec's params and env (a spec's env may override an allow-listed one)."""
    exports = [
        *ctx.passthrough_env,
        ("HPCOPS_RUN_ID", ctx.run_id),
        ("HPCOPS_RUN_DIR", str(ctx.run_dir.path)),
        ("HPCOPS_LAB", ctx.lab),
        ("HPCOPS_EXPERIMENT", spec.experiment),
        ("HPCOPS_ATTEMPT", str(ctx.attempt)),
        ("HPCOPS_CHECKPOINT_DIR", checkpoint_dir(ctx)),
        *ctx.mlflow_env,
        *ctx.pipeline_env,
    ]
    if ctx.code is not None:
        exports += [
            ("HPCOPS_CODE_DIR", _source_dir(ctx)),
            ("HPCOPS_GIT_COMMIT", ctx.code.commit),
        ]
    exports += [(t.env_name, data_dest(spec, ctx, t.where)) for t in spec.data]
    exports += [(f"HPCOPS_PARAM_{k.upper()}", _env_text(v)) for k, v in spec.params.items()]
    exports += list(spec.env.items())
    for name, _ in exports:
        if not _ENV_NAME_RE.fullmatch(name):  # the spec checked them; a name is never quoted
            raise SpecError(
                _source(spec, ctx), [FieldProblem("env", f"{name!r} is not a variable name")]
            )
    return exports


def _source_dir(ctx: JobContext) -> str:
    return str(ctx.run_dir.path / "src")


def data_dest(spec: Spec, ctx: JobContext, where: str) -> str:
    """Where the job finds a data target: with code, `where` in the run's own checkout (a link
    to the target's view), under its workdir when that is a folder of the checkout; without
    code, the view itself. Never under an absolute workdir: that folder is shared by every run
    of the spec, and each run repointing the one link there would hand a running job another
    run's data version while its record names its own (issue 12, item 7)."""
    if spec.code is None:
        return data_view(ctx, where)
    workdir = _workdir(spec, ctx)
    if workdir is None or (spec.workdir or "").startswith("/"):
        workdir = _source_dir(ctx)
    return str(Path(workdir) / where)


def data_view(ctx: JobContext, where: str) -> str:
    """Where the stager puts a target's read-only copy: in the run directory, outside the code
    checkout, which a requeued job makes afresh."""
    return str(ctx.run_dir.path / "data" / where)


def _workdir(spec: Spec, ctx: JobContext) -> str | None:
    """Where the command runs: with code, the checkout or a folder of it (or an absolute path)."""
    if spec.code is None or (spec.workdir is not None and spec.workdir.startswith("/")):
        return spec.workdir
    return str(Path(_source_dir(ctx)) / (spec.workdir or ""))


def _heredoc_delimiter(command: str, token: str) -> str:
    """A here-document delimiter that is not a line of the command (so cannot end it early)."""
    delimiter = f"HPCOPS_COMMAND_{token}"
    lines = set(command.split("\n"))
    while delimiter in lines:
        delimiter += "_"
    return delimiter


def _available(dirs: Sequence[Path]) -> list[str]:
    names = {
        p.name.removesuffix(TEMPLATE_SUFFIX)
        for d in dirs
        if d.is_dir()
        for p in d.glob(f"*{TEMPLATE_SUFFIX}")
    }
    return sorted(names)


@functools.lru_cache(maxsize=16)
def _environment(dirs: tuple[Path, ...]) -> jinja2.Environment:
    # One environment per list of template directories, so each template is compiled once per
    # process (compiling costs about 9 ms, the rest of a render well under 1 ms); auto_reload
    # still picks up a lab template edited on disk.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shquote"] = _shquote
    return env


_STAGING_COMMENT_RE = re.compile(r"hpcops:[0-9a-f]{8,64}:stage")
STAGING_LOG = "staging.log"
STAGING_SCRIPT = "staging.sbatch"


def render_staging_script(spec: Spec, ctx: JobContext, job: StagingJob) -> str:
    """The staging job's script: the stager and nothing else, on a small allocation. Its comment
    carries the run's token with ":stage", so the check by token never mistakes it for the
    run's own job; its output goes to RUN_DIR/staging.log (`hpcops logs --staging`)."""
    assert ctx.staging is not None
    partition = job.partition or ctx.default_partition
    directives: list[tuple[str, str]] = [
        ("job-name", f"{job_name(spec, ctx)[:57]}-stage"),
        ("comment", f"hpcops:{ctx.token}:stage"),
        ("output", str(ctx.run_dir.path / STAGING_LOG)),
        ("error", str(ctx.run_dir.path / STAGING_LOG)),
        ("export", "NONE"),
    ]
    if ctx.account is not None:
        directives.append(("account", ctx.account))
    if partition is not None:
        directives.append(("partition", partition))
    if job.qos is not None:
        directives.append(("qos", job.qos))
    directives += [
        ("nodes", "1"),
        ("ntasks", "1"),
        ("cpus-per-task", str(job.cpus)),
        ("mem", f"{job.mem_mb}M"),
        ("time", str(job.time_min)),
    ]
    lines = ["#!/bin/bash"]
    for option, value in directives:
        pattern = _STAGING_COMMENT_RE if option == "comment" else DIRECTIVE_VALUE_RE[option]
        if not pattern.fullmatch(value):
            raise ConfigError(f"staging job: --{option}={value!r} cannot go on an #SBATCH line")
        lines.append(f"#SBATCH --{option}={value}")
    lines.append(
        f"# hpcops: stage the data of run {ctx.run_id} (lab {ctx.lab}) before its job starts."
    )
    if ctx.passthrough_env:
        # --export=NONE: the stager gets the account's login environment, Slurm's variables
        # and these of the daemon's (jobs.env_passthrough), never the daemon's secrets.
        lines += [f"export {name}={_shquote(value)}" for name, value in ctx.passthrough_env]
    lines += [
        f"exec {_shquote(ctx.staging.python)} -m hpcops.data.stage {_shquote(ctx.staging.plan)}",
        "",
    ]
    return "\n".join(lines)


def render_script(spec: Spec, ctx: JobContext, template_dirs: Sequence[Path] = ()) -> str:
    """The sbatch script for one submission of `spec`.

    Templates are looked up as <spec.template>.sh.j2 in the lab's `template_dirs` first, then in
    BUILTIN_TEMPLATE_DIR. Raises SpecError for an unknown template or a bad directive value,
    ConfigError for a broken lab template or run_root.
    """
    dirs = [*template_dirs, BUILTIN_TEMPLATE_DIR]
    source = _source(spec, ctx)
    name = spec.template
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name) or name not in _available(dirs):
        available = ", ".join(_available(dirs)) or "none"
        raise SpecError(
            source,
            [
                FieldProblem(
                    "template",
                    f"unknown template {name!r}; the templates are: {available} "
                    f"(files <name>{TEMPLATE_SUFFIX} in {', '.join(str(d) for d in dirs)})",
                )
            ],
        )

    directives = sbatch_directives(spec, ctx)
    run_dir = str(ctx.run_dir.path)
    context = {
        "spec": spec,
        "run_id": ctx.run_id,
        "lab": ctx.lab,
        "token": ctx.token,
        "run_dir": run_dir,
        "directives": [directive_line(o, v).removeprefix("#SBATCH ") for o, v in directives],
        "exports": _exports(spec, ctx),
        "tracked": bool(ctx.mlflow_env),
        "workdir": _workdir(spec, ctx),
        "code": ctx.code,
        "staging": ctx.staging,
        # (link under the working directory, the view it points to), one per data target
        "data_links": [
            (data_dest(spec, ctx, t.where), data_view(ctx, t.where))
            for t in spec.data
            if spec.code is not None
        ],
        "source_dir": _source_dir(ctx),
        "checkpoint_dir": checkpoint_dir(ctx),
        "checkpoint": spec.checkpoint,
        "checkpoint_wait_s": checkpoint_wait_s(spec),
        "command": spec.command,
        "command_delimiter": _heredoc_delimiter(spec.command, ctx.token),
        "started_marker": ctx.run_dir.started_marker.name,
        "exit_marker": ctx.run_dir.exit_marker.name,
    }
    env = _environment(tuple(dirs))
    filename = name + TEMPLATE_SUFFIX
    try:
        script = env.get_template(filename).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"sbatch template {exc.filename or filename}, line {exc.lineno}: {exc.message}"
        ) from None
    except Exception as exc:  # whatever a lab template's code raised, it is the template's fault
        raise ConfigError(
            f"sbatch template {filename} failed to render: {type(exc).__name__}: {exc}"
        ) from None

    problems = _header_problems(script, directives)
    if problems:
        raise ConfigError(
            f"sbatch template {filename} wrote a header sbatch must not get:\n  "
            + "\n  ".join(problems)
        )
    return script
