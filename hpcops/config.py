"""The daemon's configuration: one YAML file, every default stated once, here.

Where things live: `HPCOPS_HOME` (default `~/.hpcops`) holds the database, the socket, the lock,
the pid file and the log; the config is `$HPCOPS_HOME/config.yaml` unless `--config` names another.
"""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from hpcops.config_sections import (
    AccessConfig,
    CodeConfig,
    DaemonConfig,
    DataConfig,
    FairShareConfig,
    JobsConfig,
    QuotasConfig,
    RetryConfig,
    RunDirectoryPath,
    SchedulesConfig,
    SlurmConfig,
    SlurmName,
    TrackingConfig,
    _Strict,
)
from hpcops.errors import ConfigError, FieldProblem
from hpcops.names import closest
from hpcops.yamlio import CONFIG, YamlProblems, read_bounded, read_yaml


class Config(_Strict):
    lab: SlurmName = Field(default="lab", description="The lab's name, used in job names and logs.")
    max_active: int = Field(
        default=8,
        ge=1,
        le=10000,
        description="Runs pending or running in Slurm at once; the rest wait in hpcops' queue.",
    )
    pending_window: int = Field(
        default=4,
        ge=1,
        le=10000,
        description="At most this many runs pending in Slurm at once, so that a priority change "
        "in hpcops' queue still matters.",
    )
    run_root: RunDirectoryPath = Field(
        default=None,
        description="Run directories on storage the compute nodes see; default $HPCOPS_HOME/runs.",
    )
    template_dirs: list[Path] = Field(
        default_factory=list, description="The lab's own sbatch templates, searched first."
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    quotas: QuotasConfig = Field(default_factory=QuotasConfig)
    fair_share: FairShareConfig = Field(default_factory=FairShareConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    code: CodeConfig = Field(default_factory=CodeConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    schedules: SchedulesConfig = Field(default_factory=SchedulesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)

    @model_validator(mode="after")
    def _run_root_on_the_cluster(self) -> Config:
        if self.slurm.transport == "ssh" and self.run_root is None:
            raise ValueError(
                "run_root is required with slurm.transport: ssh: the run directories live on "
                "the cluster's shared storage, not in the daemon's home; e.g. "
                "run_root: /scratch/lab/hpcops/runs"
            )
        return self

    def run_root_in(self, home: Path) -> Path:
        return self.run_root if self.run_root is not None else home / "runs"

    def data_cache_in(self, home: Path) -> Path:
        return self.data.cache_root if self.data.cache_root is not None else home / "data-cache"

    def code_root_in(self, home: Path) -> Path:
        return self.code.mirror_root if self.code.mirror_root is not None else home / "code"

    @model_validator(mode="after")
    def _tracking_needs_the_cluster(self) -> Config:
        # The tracker reads the run directories (script, logs, relay stores) from the daemon's
        # own disk, and falls back to relay mode while the server is down: off the cluster,
        # neither would reach the jobs. Refused rather than half-working.
        if self.slurm.transport == "ssh" and self.tracking.enabled:
            raise ValueError(
                "MLflow tracking does not work yet with a daemon off the cluster "
                "(slurm.transport: ssh); set tracking.enabled: false"
            )
        return self

    @model_validator(mode="after")
    def _direct_needs_a_server(self) -> Config:
        uri = self.tracking.tracking_uri
        if self.tracking.mode == "direct" and not (uri or "").startswith(("http://", "https://")):
            raise ValueError(
                "tracking.mode direct needs tracking.tracking_uri to be an http(s) MLflow server "
                "that compute nodes reach; with a sqlite store use mode relay (or auto)"
            )
        return self


def load_config(path: Path | None, home: Path) -> Config:
    """Read the config: a missing default file means defaults, a missing named file an error."""
    explicit = path is not None
    config_path = path if path is not None else home / "config.yaml"
    try:
        data = read_bounded(config_path, CONFIG)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{config_path}: no such config file") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc}") from exc
    except YamlProblems as exc:
        raise ConfigError(_yaml_problems(str(config_path), exc.problems)) from None
    return parse_config(data, str(config_path))


def parse_config(text: str | bytes, source: str) -> Config:
    """The config from YAML text, read by hpcops' one YAML reader (hpcops.yamlio): YAML 1.2's
    scalars as in a spec (`time: 1:30:00` is text, not YAML 1.1's base-60 integer 5400), no
    anchors, aliases or tags, no duplicate keys, at most 1 MiB. ConfigError for anything else."""
    try:
        data = read_yaml(text, CONFIG)
    except YamlProblems as exc:
        raise ConfigError(_yaml_problems(source, exc.problems)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(source, exc)) from None


def _yaml_problems(source: str, problems: list[FieldProblem]) -> str:
    if len(problems) == 1 and not problems[0].location:
        return f"{source}: {problems[0].message}"
    lines = [f"{source}: invalid config"]
    lines += [f"  {p.location}: {p.message}" if p.location else f"  {p.message}" for p in problems]
    return "\n".join(lines)


def _describe(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        location = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {location}: unknown setting{_did_you_mean(err['loc'])}")
        elif location:
            lines.append(f"  {location}: {err['msg']}")
        else:  # a check across settings names them in its message
            lines.append(f"  {err['msg']}")
    return "\n".join(lines)


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        # An optional section (`ssh: SshConfig | None`): suggest from the section's model.
        annotation = next(
            (a for a in typing.get_args(annotation) if isinstance(a, type) and a is not type(None)),
            annotation,
        )
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    names = list(model.model_fields)
    close = closest(str(loc[-1]), names)
    hint = f"; did you mean '{close}'?" if close else ""
    return f"{hint} Allowed: {', '.join(names)}"
