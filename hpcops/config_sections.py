"""The daemon config's sections (ssh, slurm, daemon, access, quotas, fair share, code, data,
schedules, jobs, tracking): each a strict pydantic model with its defaults stated once.
config.py assembles them into `Config` and reads the file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from hpcops import cadence
from hpcops.names import SLURM_NAME_PATTERN, SLURM_NAME_RE
from hpcops.units import parse_mem_mb, parse_slurm_time

_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+-]+$")  # it lands on #SBATCH --output= lines
_HOST_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")  # a DNS name, IP or ssh alias
_UNIX_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")


def _slurm_name(value: str | None) -> str | None:
    """A partition, account or QOS name, by the one rule spec and render use (hpcops.names)."""
    if value is not None and not SLURM_NAME_RE.fullmatch(value):
        raise ValueError(f"must match {SLURM_NAME_PATTERN}")
    return value


SlurmName = Annotated[str, AfterValidator(_slurm_name)]
OptionalSlurmName = Annotated[str | None, AfterValidator(_slurm_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshConfig(_Strict):
    """The cluster's login node, for a daemon that runs off the cluster (slurm.transport: ssh).
    The daemon account's ~/.ssh/config applies to what is left out (HostName, User, Port,
    IdentityFile, ProxyJump)."""

    host: str = Field(description="The login node: a host name, an address or an ssh alias.")
    user: str | None = Field(default=None, description="The account the jobs run as there.")
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: Path | None = Field(default=None, description="Private key file.")
    known_hosts: Path = Field(
        default=Path("~/.ssh/known_hosts"),
        description="Host keys to trust; an unknown or changed key is refused, never added.",
    )
    connect_timeout_s: float = Field(default=15.0, gt=0, le=300)
    min_reconnect_interval_s: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="At most one new SSH connection per this many seconds, whatever happens.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST_NAME.fullmatch(value):
            raise ValueError(
                "must be a host name, an IP address or an ~/.ssh/config alias "
                "(letters, digits and _ . -), e.g. login.cluster.example.edu"
            )
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _UNIX_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a Unix user name")
        return value

    @field_validator("identity_file", "known_hosts")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_absolute():
            raise ValueError("must be an absolute path or start with ~/")
        return value


class SlurmConfig(_Strict):
    account: OptionalSlurmName = Field(
        default=None, description="The lab's Slurm account (sbatch -A); also the poll's filter."
    )
    default_partition: OptionalSlurmName = Field(
        default=None, description="Partition for specs that name none; None lets Slurm choose."
    )
    squeue_interval_s: float = Field(
        default=30.0,
        ge=2.0,
        le=3600.0,
        description="Seconds between safety-net squeue polls (2 slurmctld RPCs each).",
    )
    partition_cache_s: float = Field(
        default=600.0, ge=10.0, description="How long partition limits (sinfo) are trusted."
    )
    command_timeout_s: float = Field(default=60.0, ge=5.0, le=600.0)
    submit_grace_s: float = Field(
        default=30.0,
        ge=5.0,
        le=600.0,
        description="A SUBMITTING run that Slurm does not know after this long is resubmitted.",
    )
    sbatch_workers: int = Field(
        default=4,
        ge=1,
        le=32,
        description="sbatch calls one release step runs at once (1: one after another); "
        "each is a slurmctld RPC, so this bounds the lab's burst, not its total.",
    )

    transport: Literal["local", "ssh"] = Field(
        default="local",
        description="local: Slurm's commands on this machine (the login node); ssh: over one "
        "persistent SSH connection to slurm.ssh.host, for a daemon off the cluster.",
    )
    ssh: SshConfig | None = None

    @model_validator(mode="after")
    def _ssh_with_transport(self) -> SlurmConfig:
        if self.transport == "ssh" and self.ssh is None:
            raise ValueError(
                "transport is ssh but slurm.ssh is missing; e.g. "
                "ssh: {host: login.cluster.example.edu, user: labsvc}"
            )
        if self.transport == "local" and self.ssh is not None:
            raise ValueError(
                "slurm.ssh is set but transport is local; set transport: ssh to use it"
            )
        return self


class DaemonConfig(_Strict):
    tick_interval_s: float = Field(
        default=1.0,
        gt=0.0,
        le=60.0,
        description="Seconds between loop ticks; a tick reads markers, it asks Slurm nothing.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    log_backups: int = Field(default=5, ge=0, le=100)


def _check_unix_names(values: list[str]) -> list[str]:
    for value in values:
        if not _UNIX_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a Unix user name")
    return values


class AccessConfig(_Strict):
    """Who may do what. Identity always comes from the socket's peer credentials."""

    socket_group: str | None = Field(
        default=None,
        description="Unix group that may connect to the daemon's socket (mode 0660); "
        "None: only the daemon's own account (mode 0600).",
    )
    members_group: str | None = Field(
        default=None, description="Members of this Unix group are lab members."
    )
    members: list[str] = Field(default_factory=list, description="Further members, by name.")
    leads: list[str] = Field(
        default_factory=list,
        description="Group leads: any priority, hold/release/cancel any run, top, quotas.",
    )
    member_priority_min: int = Field(default=-100, ge=-1000, le=1000)
    member_priority_max: int = Field(default=100, ge=-1000, le=1000)

    _names = field_validator("members", "leads")(_check_unix_names)

    @field_validator("socket_group", "members_group")
    @classmethod
    def _group_name(cls, value: str | None) -> str | None:
        if value is not None and not _UNIX_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a Unix group name")
        return value


class LimitsConfig(_Strict):
    jobs: int | None = Field(default=None, ge=0, le=100000)
    cpus: int | None = Field(default=None, ge=0, le=10_000_000)
    gpus: int | None = Field(default=None, ge=0, le=100000)


class QuotasConfig(_Strict):
    """Concurrent use in Slurm (pending or running), jobs submitted by hand under the lab's
    account included. A run that does not fit waits; it never fails for it."""

    lab: LimitsConfig = Field(default_factory=LimitsConfig)
    per_user: LimitsConfig = Field(default_factory=LimitsConfig)
    users: dict[str, LimitsConfig] = Field(default_factory=dict)
    partitions: dict[str, LimitsConfig] = Field(default_factory=dict)

    @field_validator("users")
    @classmethod
    def _user_names(cls, value: dict[str, LimitsConfig]) -> dict[str, LimitsConfig]:
        _check_unix_names(list(value))
        return value

    @field_validator("partitions")
    @classmethod
    def _partition_names(cls, value: dict[str, LimitsConfig]) -> dict[str, LimitsConfig]:
        for name in value:
            if not SLURM_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a partition name")
        return value


class FairShareConfig(_Strict):
    window_days: float = Field(default=7.0, gt=0, le=365)
    gpu_hour_weight: float = Field(default=1.0, ge=0)
    cpu_hour_weight: float = Field(default=0.05, ge=0)
    refresh_s: float = Field(default=300.0, ge=10, description="How often usage is re-read.")


class RetryConfig(_Strict):
    """A run's next attempt (a spec's `retry:`) queues like a new run: ordered by when it was
    queued again, so a preempted or timed-out run does not jump the lab's queue."""

    keep_place: bool = Field(
        default=False,
        description="A run's next attempt keeps its place in the queue (ordered by when the run "
        "was first queued) instead of queueing at the back.",
    )


def _absolute_path(value: Path | None) -> Path | None:
    """An optional path setting: ~ expanded, and absolute (the daemon has no useful cwd)."""
    if value is not None and not value.expanduser().is_absolute():
        raise ValueError("must be an absolute path")
    return value.expanduser() if value is not None else None


OptionalAbsolutePath = Annotated[Path | None, AfterValidator(_absolute_path)]


def _run_directory(value: Path | None) -> Path | None:
    """Where run directories go: absolute, and plain enough for an #SBATCH --output line."""
    value = _absolute_path(value)
    if value is not None and not _SAFE_PATH.fullmatch(str(value)):
        raise ValueError(
            "may hold only letters, digits and . _ / + - (it is written on #SBATCH --output lines)"
        )
    return value


RunDirectoryPath = Annotated[Path | None, AfterValidator(_run_directory)]


class CodeConfig(_Strict):
    mirror_root: OptionalAbsolutePath = Field(
        default=None,
        description="The lab's bare git mirror and its upload folder, on storage the compute "
        "nodes see; default $HPCOPS_HOME/code.",
    )
    fetch_timeout_s: float = Field(
        default=300.0,
        ge=5.0,
        le=3600.0,
        description="Longest a submit may spend taking in a bundle or fetching a repo URL.",
    )


class StagingJobConfig(_Strict):
    """What the staging job asks Slurm for: it reads a remote and writes scratch, little CPU."""

    partition: OptionalSlurmName = Field(
        default=None, description="Partition of staging jobs; None: slurm.default_partition."
    )
    qos: OptionalSlurmName = None
    cpus: int = Field(default=1, ge=1, le=64)
    mem: str = Field(default="2G", description="--mem of the staging job (512M, 2G).")
    time: str = Field(default="01:00:00", description="--time of the staging job.")

    @field_validator("mem", "time", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        # `mem: 4096` (megabytes) and `time: 90` (minutes) are YAML integers, as in a spec.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str) -> str:
        parse_mem_mb(value)
        return value

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        parse_slurm_time(value)
        return value


class DataConfig(_Strict):
    cache_root: OptionalAbsolutePath = Field(
        default=None,
        description="The lab's content-addressed data cache, on scratch the compute nodes see; "
        "default $HPCOPS_HOME/data-cache.",
    )
    staging: Literal["job", "inline"] = Field(
        default="job",
        description="job: a small Slurm job of its own stages the data, and the run's job "
        "starts after it (afterok); inline: the run's job stages it before its command.",
    )
    staging_job: StagingJobConfig = Field(default_factory=lambda: StagingJobConfig())
    python: OptionalAbsolutePath = Field(
        default=None,
        description="The Python (with hpcops and DVC) that jobs stage with; default the "
        "daemon's own.",
    )
    gc_grace_s: float = Field(
        default=3600.0,
        ge=0.0,
        description="`hpcops cache gc` leaves objects younger than this: a fetch in progress "
        "has not written its version's manifest yet.",
    )


class SchedulesConfig(_Strict):
    """Defaults for `hpcops schedule add`; each schedule keeps the values it was added with."""

    timezone: str | None = Field(
        default=None,
        description="Time zone of cron schedules that name none; None: the login node's zone.",
    )
    catch_up: Literal["one", "none", "all"] = Field(
        default="one", description="What a schedule does about firings missed while down."
    )
    catch_up_grace_s: int = Field(
        default=3600,
        ge=0,
        le=31 * 86400,
        description="A missed firing older than this gets no catch-up run.",
    )
    min_interval_s: int = Field(
        default=60,
        ge=1,
        le=86400,
        description="The shortest `--every` and `--check-every` interval: each firing costs "
        "an sbatch, each data check a git fetch.",
    )
    check_every_s: int = Field(
        default=300,
        ge=1,
        le=cadence.MAX_EVERY_S,
        description="How often an on-data-change schedule checks its data (`--check-every`).",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else cadence.check_timezone(value)

    @model_validator(mode="after")
    def _default_check_within_minimum(self) -> SchedulesConfig:
        if self.check_every_s < self.min_interval_s:
            raise ValueError(
                f"check_every_s ({self.check_every_s}) is below min_interval_s "
                f"({self.min_interval_s}); raise it, or lower min_interval_s"
            )
        return self


# Names a job never receives from the daemon's environment, even when jobs.env_passthrough
# lists them: the daemon's MLflow settings and credentials, cloud and DVC remote keys, its SSH
# agent. Matched case-insensitively on the whole name.
_SECRET_NAME_RES: Final = (
    (re.compile(r"MLFLOW_.*", re.I), "MLflow's settings and credentials (MLFLOW_*)"),
    (re.compile(r"(AWS|AZURE|GOOGLE|GCP|GCLOUD)_.*", re.I), "cloud credentials"),
    (re.compile(r"SSH_(AUTH_SOCK|AGENT_PID)", re.I), "the daemon's SSH agent"),
    (
        re.compile(r".*(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|_KEY$|_KEY_).*", re.I),
        "a secret-looking name (*TOKEN*, *SECRET*, *PASSWORD*, *CREDENTIAL*, *_KEY)",
    ),
)
# Names the job's script sets itself, or that Slurm and bash set inside the job, or that change
# how the job's own script runs.
_JOB_OWNED_PREFIXES: Final = ("HPCOPS_", "SLURM_", "SBATCH_", "BASH")
_JOB_OWNED_NAMES: Final = frozenset({"IFS", "ENV", "SHELLOPTS", "EUID", "UID", "PPID", "_"})
# The examples run `python` from the daemon's venv, found on the daemon's PATH; the locale and
# time zone keep a job's output and timestamps as the member saw them when testing by hand.
DEFAULT_ENV_PASSTHROUGH: Final = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def passthrough_problem(name: str) -> str | None:
    """Why the daemon's variable `name` may not be handed to jobs, or None if it may."""
    if not _ENV_NAME_RE.fullmatch(name):
        return f"{name!r} is not an environment variable name"
    for pattern, what in _SECRET_NAME_RES:
        if pattern.fullmatch(name):
            return (
                f"{name} is {what}: the daemon's secrets never reach jobs. A job that needs a "
                "credential reads it from a file of its own (e.g. ~/.aws/credentials, a DVC "
                "remote's config --local)"
            )
    if name.upper().startswith(_JOB_OWNED_PREFIXES) or name in _JOB_OWNED_NAMES:
        return f"{name} is set inside the job by hpcops, Slurm or bash, not passed through"
    return None


class JobsConfig(_Strict):
    """What every job (run and staging) gets from the daemon. A job starts from Slurm's clean
    environment (`#SBATCH --export=NONE`: the account's login environment plus SLURM_*), and its
    script exports the variables listed here with the daemon's values, then hpcops' own."""

    env_passthrough: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ENV_PASSTHROUGH),
        max_length=64,
        description="The daemon's environment variables each job gets, with the daemon's "
        "values (PATH: the daemon's python and tools). Secret-looking names are refused.",
    )

    @field_validator("env_passthrough")
    @classmethod
    def _no_secrets(cls, value: list[str]) -> list[str]:
        problems = [p for p in map(passthrough_problem, value) if p is not None]
        if problems:
            raise ValueError("; ".join(problems))
        if len(set(value)) != len(value):
            twice = sorted({n for n in value if value.count(n) > 1})
            raise ValueError(f"lists {', '.join(twice)} more than once")
        return value

    def passthrough(self, environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The listed variables the daemon has, with its values, in the order listed."""
        return tuple((name, environ[name]) for name in self.env_passthrough if name in environ)


_TRACKING_SCHEMES = ("http://", "https://", "sqlite:///")
_URI_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f'\"`$\\]")


class TrackingConfig(_Strict):
    """MLflow records of every run (hpcops/tracking). See the README's "MLflow" section."""

    enabled: bool = Field(default=True, description="Record every run in MLflow.")
    tracking_uri: str | None = Field(
        default=None,
        description="The lab's `mlflow server` (http:// or https://), or a sqlite:/// store. "
        "Default: sqlite:///$HPCOPS_HOME/mlflow.db.",
    )
    mode: Literal["auto", "direct", "relay"] = Field(
        default="auto",
        description="direct: jobs log to the server; relay: jobs log into a file store on "
        "shared scratch that the daemon copies to the server; auto: direct for an http(s) "
        "server, relay for a sqlite store.",
    )
    relay_root: RunDirectoryPath = Field(
        default=None,
        description="Where relay file stores go, on storage the compute nodes share: one "
        "directory per run. Default: an `mlflow` directory in each run's directory.",
    )
    relay_interval_s: float = Field(
        default=5.0, ge=0.5, le=600.0, description="How often a relay copies what jobs logged."
    )
    request_timeout_s: int = Field(
        default=10, ge=1, le=300, description="One request to the tracking server, at most."
    )
    create_wait_s: float = Field(
        default=10.0,
        ge=0.0,
        le=600.0,
        description="In direct mode, how long a queued run may wait for its MLflow record "
        "before it is released in relay mode instead.",
    )
    cluster: OptionalSlurmName = Field(
        default=None,
        description="The cluster's name for the `hpcops.cluster` tag; default: ClusterName from "
        "slurm.conf ($SLURM_CONF or /etc/slurm/slurm.conf).",
    )
    max_log_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="stdout/stderr larger than this are attached as their last this-many bytes.",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(_TRACKING_SCHEMES):
            raise ValueError(
                "must be an http:// or https:// MLflow server, or sqlite:////absolute/path.db, "
                "e.g. http://mlflow.lab.example.edu:5000"
            )
        if _URI_FORBIDDEN.search(value):
            raise ValueError("must not hold spaces, quotes, '$', '\\' or control characters")
        authority = value.split("://", 1)[1].split("/", 1)[0]
        if "@" in authority:
            raise ValueError(
                "must not carry credentials (user:password@): it is written into job scripts. "
                "Give the daemon MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or "
                "MLFLOW_TRACKING_TOKEN) in its environment instead"
            )
        return value.rstrip("/")

    def uri_in(self, home: Path) -> str:
        return self.tracking_uri or f"sqlite:///{home / 'mlflow.db'}"

    def mode_for(self, home: Path) -> Literal["direct", "relay"]:
        if self.mode != "auto":
            return self.mode
        return "direct" if self.uri_in(home).startswith(("http://", "https://")) else "relay"
