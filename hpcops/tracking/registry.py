"""Promotion in the MLflow Model Registry: a run's model registered as a new version, and an
alias (`champion`) moved to it only if its metric beats the version that holds the alias now.

    decide    the rule, on plain numbers (pure): no holder moves; a missing candidate, a holder
              that cannot be compared, a tie or a worse value does not
    promote   the registry's side: find the model, register it once, record why, move the alias

What the registry needs (measured on mlflow 3.17.2, docs/notes-stack.md): the model's files as
an MLflow model (an `MLmodel` file) either in the run's artifacts under `artifact_path` (MLflow
2's `log_model(m, "model")`, or `log_artifacts(saved_dir, "model")`), or as an MLflow 3 logged
model named `artifact_path` whose source run is the run (`mlflow.sklearn.log_model(m,
name="model")`, whose files are not in the run's artifacts at all). The version's source is then
the run's artifact URI plus the path (with the run id), or the logged model's own artifact
location (with its model id): the pairs `mlflow server` accepts (a local or mlflow-artifacts
source must lie under the run's, or the model's, artifact root). Not `models:/<model_id>`, which
mlflow.register_model uses: the sqlite registry resolves it through the process's global
tracking URI, not the client's, and fails in a daemon that never set one. The registry checks
no source (it registers a path that does not exist), so promote checks first and refuses a run
without the model.

Idempotent under a retry: the version registered for this run (name, run id and source) is found
by a search before one is created, so a daemon killed after the registration registers nothing
the second time; the decision is made again against the alias's holder at that moment, and the
alias moved if it says so. Every MLflow exception leaves as TrackingUnreachable or
TrackingRejected, translated as server.py translates them.

Two promotions of one registered model at once could both move the alias: the holder is read,
then the alias written, and the registry has no compare-and-set. The caller runs a model's
promotions one at a time.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from hpcops.errors import TrackingRejected
from hpcops.tracking.server import _translated

Mode = Literal["max", "min"]

# Tags on each version promote registers: what it was compared on, with whom, and the outcome.
DECISION_TAG: Final = "hpcops.promotion.decision"  # "moved" or "kept"
REASON_TAG: Final = "hpcops.promotion.reason"
METRIC_TAG: Final = "hpcops.promotion.metric"  # "test_accuracy max"
VALUE_TAG: Final = "hpcops.promotion.value"  # the candidate's metric
HOLDER_TAG: Final = "hpcops.promotion.holder_version"
HOLDER_VALUE_TAG: Final = "hpcops.promotion.holder_value"
MARGIN_TAG: Final = "hpcops.promotion.margin"  # better by (positive) or worse by (negative)
ALIAS_TAG: Final = "hpcops.promotion.alias"
MODEL_FILE: Final = "MLmodel"


class _Unmeasured(enum.Enum):
    UNMEASURED = "unmeasured"


# A version holds the alias but its metric cannot be read (its run logged none, the run is gone,
# or the version was registered from a path without a run): it cannot be beaten by a number.
UNMEASURED: Final = _Unmeasured.UNMEASURED


# MLflow's rules for an alias (mlflow/utils/validation.py, 3.17.2): checked before anything is
# registered, since the registry refuses a bad alias only when it is set, after the version.
_ALIAS = re.compile(r"[\w\-]+")
_VERSION_LIKE = re.compile(r"[vV]\d+")
MAX_ALIAS_CHARS: Final = 255


def alias_problem(alias: str) -> str | None:
    """What MLflow will refuse in this alias, or None; pure (for a pipeline's loader too)."""
    if not _ALIAS.fullmatch(alias):
        return "an alias is letters, digits, '_' and '-' only (for example: champion)"
    if len(alias) > MAX_ALIAS_CHARS:
        return f"an alias is at most {MAX_ALIAS_CHARS} characters"
    if alias.lower() == "latest" or _VERSION_LIKE.fullmatch(alias):
        return f"{alias!r} is reserved by MLflow (latest, and v<number> name versions)"
    return None


def model_name_problem(name: str) -> str | None:
    """What MLflow will refuse in this registered model name, or None; pure."""
    if not name.strip():
        return "a registered model name is not blank"
    if "/" in name or ":" in name:
        return "a registered model name has no '/' or ':'"
    return None


@dataclass(frozen=True)
class Decision:
    move: bool
    reason: str
    # How much better the candidate is, in the mode's direction (positive: better); None when
    # there was nothing to compare.
    margin: float | None = None


def decide(
    candidate: float | None,
    holder: float | _Unmeasured | None,
    mode: Mode,
    *,
    metric: str = "the metric",
) -> Decision:
    """Whether a candidate's metric takes the alias from its holder's; pure.

    `holder` None: nothing holds the alias. A candidate without a value never moves it, even to
    an empty alias: a holder without a value could never be beaten afterwards (UNMEASURED), and
    the alias would stay on it for good. Ties do not move it: a retrained model as good as the
    one in use is not worth the change."""
    if candidate is None:
        return Decision(False, f"the candidate logged no {metric}")
    if math.isnan(candidate):
        return Decision(False, f"the candidate's {metric} is NaN")
    if holder is None:
        return Decision(True, f"nothing holds the alias; the candidate's {metric} is {candidate:g}")
    if holder is UNMEASURED or math.isnan(holder):
        return Decision(
            False,
            f"the holder has no {metric} to compare with; move the alias by hand "
            f"or log {metric} on the holder's run",
        )
    margin = candidate - holder if mode == "max" else holder - candidate
    if margin > 0:
        return Decision(
            True, f"{metric} {candidate:g} beats {holder:g} by {margin:g} ({mode})", margin
        )
    if margin == 0:
        return Decision(False, f"{metric} {candidate:g} ties the holder's: ties keep it", 0.0)
    return Decision(
        False, f"{metric} {candidate:g} is worse than {holder:g} by {-margin:g} ({mode})", margin
    )


@dataclass(frozen=True)
class Promotion:
    """What promote did: the version registered for the run, and where the alias is now."""

    model_name: str
    version: str
    alias: str
    moved: bool  # the alias holds `version` now (moved by this call or by an earlier attempt)
    reason: str
    candidate_value: float | None
    holder_version: str | None  # who held the alias before (None: nobody)
    holder_value: float | None
    margin: float | None
    registered: bool  # False: the version was found from an earlier attempt


@dataclass(frozen=True)
class _ModelSource:
    source: str
    model_id: str | None


def promote(
    uri: str,
    run_id: str,
    artifact_path: str,
    model_name: str,
    alias: str,
    metric: str | None,
    mode: Mode = "max",
) -> Promotion:
    """Register the run's model under `model_name` and move `alias` to it if it is better.

    `metric` None: every new version takes the alias (a register step without `if_better`).
    Raises TrackingRejected for a run without the model (or no such run), TrackingUnreachable
    when the server does not answer; both are safe to call again."""
    from mlflow.tracking import MlflowClient

    problem = model_name_problem(model_name) or alias_problem(alias)
    if problem is not None:
        raise TrackingRejected(f"promote to {model_name!r} as {alias!r}: {problem}")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with _translated(f"read run {run_id}"):
        run = client.get_run(run_id)
    candidate = _metric(run, metric)
    source = _model_source(client, uri, run, artifact_path)
    holder_version = _ensure_registered_model(client, model_name).get(alias)
    existing = _existing_version(client, model_name, run_id, source.source)

    if existing is not None and str(existing.version) == holder_version:
        tags = dict(existing.tags)
        return Promotion(
            model_name=model_name,
            version=str(existing.version),
            alias=alias,
            moved=True,
            reason=tags.get(REASON_TAG, f"version {existing.version} holds {alias!r} already"),
            candidate_value=candidate,
            holder_version=_tag_or_none(tags, HOLDER_TAG),
            holder_value=_float_or_none(tags.get(HOLDER_VALUE_TAG)),
            margin=_float_or_none(tags.get(MARGIN_TAG)),
            registered=False,
        )

    holder_value: float | None = None
    if metric is None:
        decision = Decision(True, "no if_better: every new version takes the alias")
    elif holder_version is None:
        decision = decide(candidate, None, mode, metric=metric)
    else:
        held = _holder_value(client, model_name, holder_version, metric)
        holder_value = None if held is UNMEASURED else held
        decision = decide(candidate, held, mode, metric=metric)
    tags = _tags(decision, alias, metric, mode, candidate, holder_version, holder_value)

    if existing is None:
        version = _create_version(client, model_name, run_id, source, tags)
    else:
        version = str(existing.version)
        _update_tags(client, model_name, version, dict(existing.tags), tags)
    if decision.move:
        with _translated(f"move alias {alias!r} of {model_name!r} to version {version}"):
            client.set_registered_model_alias(model_name, alias, version)
    return Promotion(
        model_name=model_name,
        version=version,
        alias=alias,
        moved=decision.move,
        reason=decision.reason,
        candidate_value=candidate,
        holder_version=holder_version,
        holder_value=holder_value,
        margin=decision.margin,
        registered=existing is None,
    )


def _metric(run: Any, metric: str | None) -> float | None:
    if metric is None:
        return None
    value = run.data.metrics.get(metric)
    return None if value is None else float(value)


def _model_source(client: Any, uri: str, run: Any, artifact_path: str) -> _ModelSource:
    """Where the run's model is, in the order mlflow.register_model looks: the run's artifacts,
    then a logged model of that name from this run (the latest, if it logged several)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    path = artifact_path.strip("/")
    artifact_uri = run.info.artifact_uri
    with _translated(f"list {path!r} of run {run.info.run_id}"):
        repo = get_artifact_repository(artifact_uri, tracking_uri=uri)
        files = {f.path for f in repo.list_artifacts(path)}
    if f"{path}/{MODEL_FILE}" in files:
        return _ModelSource(f"{artifact_uri.rstrip('/')}/{path}", None)
    with _translated(f"search logged models of run {run.info.run_id}"):
        found = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{_quoted(run.info.run_id)}'",
        )
    models = [m for m in found if m.name == path]  # compared here, as names are in versions
    if models:
        latest = max(models, key=lambda m: m.creation_timestamp)
        return _ModelSource(str(latest.artifact_location), str(latest.model_id))
    raise TrackingRejected(
        f"run {run.info.run_id} has no model at {path!r}: its artifacts hold no "
        f"{path}/{MODEL_FILE} and it logged no model named {path!r}; the training script "
        f"logs one with, for example, mlflow.sklearn.log_model(model, name={path!r}), or, "
        f"on a node without network (the relay forwards run artifacts only), "
        f"mlflow.sklearn.save_model(model, DIR) then mlflow.log_artifacts(DIR, {path!r})"
    )


def _ensure_registered_model(client: Any, name: str) -> dict[str, str]:
    """The registered model's aliases (alias -> version), the model created if missing."""
    from mlflow.exceptions import MlflowException

    with _translated(f"read registered model {name!r}"):
        try:
            model = client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                client.create_registered_model(name)
            except MlflowException as again:
                # Another promotion created it a moment ago.
                if again.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            return {}
    return {str(alias): str(version) for alias, version in model.aliases.items()}


def _existing_version(client: Any, name: str, run_id: str, source: str) -> Any | None:
    # By run id alone, the name compared here: a name with a quote in a filter string is not
    # found again through MLflow's escaping (measured), and a missed version is a second one.
    with _translated(f"search versions of {name!r} for run {run_id}"):
        versions = client.search_model_versions(f"run_id = '{_quoted(run_id)}'")
    mine = [v for v in versions if v.name == name and v.source == source]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def _holder_value(client: Any, name: str, version: str, metric: str) -> float | _Unmeasured:
    from mlflow.exceptions import MlflowException

    with _translated(f"read version {version} of {name!r}"):
        holder = client.get_model_version(name, version)
    if not holder.run_id:
        return UNMEASURED
    with _translated(f"read run {holder.run_id}"):
        try:
            run = client.get_run(holder.run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return UNMEASURED  # the holder's run was deleted for good
    value = _metric(run, metric)
    return UNMEASURED if value is None else value


def _tags(
    decision: Decision,
    alias: str,
    metric: str | None,
    mode: Mode,
    candidate: float | None,
    holder_version: str | None,
    holder_value: float | None,
) -> dict[str, str]:
    tags = {
        DECISION_TAG: "moved" if decision.move else "kept",
        REASON_TAG: decision.reason,
        ALIAS_TAG: alias,
    }
    if metric is not None:
        tags[METRIC_TAG] = f"{metric} {mode}"
    if candidate is not None:
        tags[VALUE_TAG] = repr(candidate)
    if holder_version is not None:
        tags[HOLDER_TAG] = holder_version
    if holder_value is not None:
        tags[HOLDER_VALUE_TAG] = repr(holder_value)
    if decision.margin is not None:
        tags[MARGIN_TAG] = repr(decision.margin)
    return tags


def _create_version(
    client: Any, name: str, run_id: str, source: _ModelSource, tags: dict[str, str]
) -> str:
    with _translated(f"register {source.source} as a version of {name!r}"):
        # await_creation_for=0: the open-source registry makes a version READY in the same
        # request (measured); waiting would poll for up to 300 s on the daemon's thread.
        version = client.create_model_version(
            name,
            source.source,
            run_id=run_id,
            tags=tags,
            await_creation_for=0,
            model_id=source.model_id,
        )
    return str(version.version)


def _update_tags(
    client: Any, name: str, version: str, have: dict[str, str], want: dict[str, str]
) -> None:
    """A retry's decision written over the earlier attempt's (the holder may have changed)."""
    for key, value in want.items():
        if have.get(key) != value:
            with _translated(f"tag version {version} of {name!r}"):
                client.set_model_version_tag(name, version, key, value)
    for key in have.keys() - want.keys():
        if key.startswith("hpcops.promotion."):
            with _translated(f"untag version {version} of {name!r}"):
                client.delete_model_version_tag(name, version, key)


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")


def _tag_or_none(tags: dict[str, str], key: str) -> str | None:
    return tags.get(key) or None


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
