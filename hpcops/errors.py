"""Every error hpcops raises on purpose, and the exit code the CLI gives for it.

    HpcopsError                    exit 1: something failed that is not the caller's input
    ├── InvalidInput               exit 2: the caller's spec, config, argument or request is wrong
    │   ├── SpecError                  a spec file: each problem names its field and what is allowed
    │   ├── ConfigError                a config file
    │   ├── NeedsFullPath              a spec the fast submit sent as it is needs the CLI's full
    │   │                              path (code to ship, a schedule: block); nothing was queued
    │   ├── _Refused                   private to the YAML reader: a feature the input may not use
    │   └── YamlProblems               a YAML document was refused: its problems, by location
    ├── NotRunning                 exit 3: no daemon answers on the socket
    │   └── RemoteUnreachable          the login node cannot be reached (DNS, refused, timeout,
    │                                  no hpcops there)
    ├── NotFound                   exit 4: no such run or schedule
    ├── PermissionDenied           exit 5: the caller's role does not allow the request
    │   ├── AuthenticationFailed       the login node refused our SSH keys
    │   └── HostKeyRejected            the login node's host key is unknown or has changed
    ├── ProtocolError              exit 1: client and daemon disagree on the wire format or version
    ├── StoreError                 exit 1: the database could not be read or written
    │   └── IllegalTransition          a state change states.TRANSITIONS does not allow (a bug)
    ├── AlreadyRunning             exit 1: another daemon holds this home's lock
    ├── TransportError             exit 1: a command could not be run or a file not reached at all
    │   │                              (not found, timed out, connection lost); the Slurm backend
    │   │                              and the engine turn it into SlurmUnreachable
    │   └── UnsafeFile                 a file a job wrote is a link, a FIFO or not beneath its root
    ├── SlurmError                 exit 1: a Slurm command failed
    │   ├── SlurmUnreachable           slurmctld did not answer: retry later, never fail a run
    │   └── SlurmRejected              Slurm refused the request (bad partition, QOS, ...)
    │       └── SlurmLimited               an association/QOS limit is full: wait, never fail a run
    ├── GitError                   exit 1: git failed; the message carries its stderr
    ├── MirrorError                exit 1: the code mirror could not take a bundle or a fetch
    ├── DataVersionError           exit 1: a .dvc file at a commit does not name one data version
    ├── CacheError                 exit 1: the data cache cannot give a version (corrupt, missing)
    ├── BadMarker                  exit 1: a run's marker file is whole but not what its job
    │                                  script writes (recorded as that run's reason)
    └── TrackingError              exit 1: the MLflow tracking server failed a request
        ├── TrackingUnreachable        it did not answer (down, timeout, 5xx): retry later
        └── TrackingRejected           it refused the request (a bad value, no such run)

TransportError, SlurmLimited, GitError, MirrorError, DataVersionError and CacheError are defined
beside the code that raises them (transport/, slurm/, code/, data/); the YAML reader's two private
signals never leave it. tests/unit/test_errors_tree.py keeps this drawing and the package in step:
every exception class in hpcops is drawn here, under the one parent it derives from.

Foreign exceptions (pydantic, SQLAlchemy, OSError from subprocess) are translated into these where
they are caught, so the CLI catches one root and prints one clear message.
"""

from __future__ import annotations

# Every CLI call imports this module (exit codes, the error kinds on the wire), so it imports
# nothing at run time: typing's names are for mypy only (see hpcops/home.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class HpcopsError(Exception):
    """Root of every error hpcops raises on purpose."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(HpcopsError):
    exit_code = 2
    kind = "invalid_input"


class FieldProblem:
    """One thing wrong with one field: `location` is a dotted path such as `resources.mem`.
    A value: equal, and hashed, by its two fields."""

    __slots__ = ("location", "message")

    def __init__(self, location: str, message: str) -> None:
        self.location = location
        self.message = message

    def _key(self) -> tuple[str, str]:
        return (self.location, self.message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FieldProblem) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"FieldProblem(location={self.location!r}, message={self.message!r})"

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class SpecError(InvalidInput):
    kind = "invalid_spec"

    def __init__(self, source: str, problems: Sequence[FieldProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: invalid spec"] + [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ConfigError(InvalidInput):
    kind = "invalid_config"


class NeedsFullPath(InvalidInput):
    """The daemon's answer to a spec file sent as it is (the fast submit, `cli/queued.py`) that
    only the CLI's full path can queue: the client then takes that path, without asking again."""

    kind = "needs_full_path"


class NotRunning(HpcopsError):
    exit_code = 3
    kind = "not_running"


class NotFound(HpcopsError):
    exit_code = 4
    kind = "not_found"


class PermissionDenied(HpcopsError):
    exit_code = 5
    kind = "permission_denied"


class RemoteUnreachable(NotRunning):
    kind = "remote_unreachable"


class AuthenticationFailed(PermissionDenied):
    kind = "authentication_failed"


class HostKeyRejected(PermissionDenied):
    kind = "host_key_rejected"


class ProtocolError(HpcopsError):
    kind = "protocol"


class StoreError(HpcopsError):
    kind = "store"


class IllegalTransition(StoreError):
    """The store refused a state change that states.TRANSITIONS does not allow: a bug in the
    daemon, never the caller's input. Nothing of the change is written."""


class AlreadyRunning(HpcopsError):
    kind = "already_running"


class SlurmError(HpcopsError):
    """A Slurm command failed. Carries the evidence: the command, its exit status and stderr."""

    kind = "slurm"

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        detail = message
        if argv:
            detail += f"\n  command: {' '.join(argv)}"
        if returncode is not None:
            detail += f"\n  exit status: {returncode}"
        if stderr.strip():
            detail += f"\n  stderr: {stderr.strip()}"
        super().__init__(detail)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class SlurmUnreachable(SlurmError):
    kind = "slurm_unreachable"


class SlurmRejected(SlurmError):
    kind = "slurm_rejected"


class TrackingError(HpcopsError):
    kind = "tracking"


class TrackingUnreachable(TrackingError):
    kind = "tracking_unreachable"


class TrackingRejected(TrackingError):
    kind = "tracking_rejected"


# The API sends errors as {"kind": ..., "message": ...}; the client raises the matching class again.
ERROR_KINDS: dict[str, type[HpcopsError]] = {
    cls.kind: cls
    for cls in (
        HpcopsError,
        InvalidInput,
        ConfigError,
        NeedsFullPath,
        NotRunning,
        RemoteUnreachable,
        AuthenticationFailed,
        HostKeyRejected,
        NotFound,
        PermissionDenied,
        ProtocolError,
        StoreError,
        AlreadyRunning,
        SlurmError,
        SlurmUnreachable,
        SlurmRejected,
        TrackingError,
        TrackingUnreachable,
        TrackingRejected,
    )
}
# A spec error crosses the wire as its rendered message; the client needs no field list to print it.
ERROR_KINDS[SpecError.kind] = InvalidInput
