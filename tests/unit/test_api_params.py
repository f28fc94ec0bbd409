"""The API's request models: what each method accepts, and the refusal a bad request gets (the
field named, what it allows), as the daemon sends it back."""

from __future__ import annotations

from typing import Any

import pytest

from hpcops.api import params as p
from hpcops.code.mirror import Shipment
from hpcops.errors import InvalidInput
from hpcops.states import RunState

COMMIT = "ab" * 20
SPEC = {"yaml": "name: x\nexperiment: e\ncommand: 'true'\n", "source": "x.yaml"}


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        # bad types
        (p.RunParams, {"run": "1; DROP TABLE run"}, "a run id is a positive integer, not '1; DROP"),
        (p.RunParams, {"run": True}, "a run id is a positive integer, not True"),
        (p.RunParams, {"run": 1.0}, "a run id is a positive integer, not 1.0"),
        (p.ListParams, {"states": "RUNNING"}, "params.states must be a list of state names"),
        (p.ListParams, {"states": [5]}, "unknown state 5; states are: QUEUED, HELD"),
        (p.ListParams, {"limit": True}, "params.limit must be an integer from 1 to 100000"),
        (p.LogsParams, {"run": 1, "offset": "0"}, "params.offset and params.max_bytes must be"),
        (p.LogsParams, {"run": 1, "stream": "stdin"}, "params.stream must be 'stdout', 'stderr'"),
        (p.SubmitParams, {"specs": "not a list"}, "params.specs must be a non-empty list of"),
        (p.SubmitParams, {"specs": [{**SPEC, "yaml": 3}]}, "params.specs[0].yaml must be a string"),
        (p.SubmitParams, {"specs": [SPEC, "x"]}, "params.specs[1] must be an object with yaml"),
        (
            p.SubmitParams,
            {"specs": [{**SPEC, "code": "HEAD"}]},
            "params.specs[].code must be an object with bundle, checkout, dirty",
        ),
        (
            p.SubmitParams,
            {"specs": [{**SPEC, "code": {"bundle": "../../etc/passwd"}}]},
            "params.specs[].code.bundle: '../../etc/passwd' is not a bundle name",
        ),
        (
            p.SubmitParams,
            {"specs": [{**SPEC, "code": {"checkout": "HEAD"}}]},
            "params.specs[].code.checkout: 'HEAD' is not a full commit id",
        ),
        (
            p.SubmitParams,
            {"specs": [{**SPEC, "code": {"dirty": "yes"}}]},
            "params.specs[].code.dirty must be true or false",
        ),
        (p.PriorityParams, {"run": 1, "priority": "5"}, "a priority is an integer, not '5'"),
        (
            p.RerunParams,
            {"run": 1.5},
            "params.run must be a run id, a sweep id (s7) or an MLflow run id",
        ),
        (p.RerunParams, {"run": 1, "set": {"params.lr": 0.1}}, "params.set must map keys to text"),
        (p.CodeHaveParams, {"commits": ["HEAD"]}, "params.commits must be a list of at most 512"),
        (p.CacheGcParams, {"max_bytes": "1G"}, "params.max_bytes must be a non-negative number"),
        (p.CacheGcParams, {"max_bytes": 1, "dry_run": 1}, "params.dry_run must be true or false"),
        (p.QuotaSetParams, {"scope": 1, "resource": "gpus"}, "quota scope 1 is not one of: lab"),
        (p.QuotaSetParams, {"scope": "lab", "resource": "mem"}, "quota resource 'mem' is not one"),
        (
            p.QuotaSetParams,
            {"scope": "lab", "resource": "gpus", "value": 1.5},
            "a quota is a whole number from 0 to 10000000, or null for unlimited; not 1.5",
        ),
        (p.ScheduleAddParams, {**SPEC, "every_s": "60"}, "params.every_s must be int, not '60'"),
        (p.ScheduleAddParams, {**SPEC, "every_s": True}, "params.every_s must be int, not True"),
        (p.ScheduleAddParams, {**SPEC, "cron": ["0"]}, "params.cron must be str, not ['0']"),
        (p.ScheduleAddParams, {**SPEC, "allow_overlap": "y"}, "params.allow_overlap must be bool"),
        (p.ScheduleListParams, {"all": "yes"}, "params.all must be true or false"),
        (p.ScheduleParams, {"schedule": True}, "a schedule is named by its id or its name, not T"),
        (p.ScheduleParams, {"schedule": ""}, "a schedule is named by its id or its name, not ''"),
        (p.ScheduleParams, {"schedule": "x" * 65}, "a schedule is named by its id or its name"),
        # missing fields: named, with what they allow
        (p.RunParams, {}, "a run id is a positive integer, not None"),
        (p.PriorityParams, {"run": 1}, "a priority is an integer, not None"),
        (p.SubmitParams, {}, "params.specs must be a non-empty list of {yaml, source}"),
        (p.SubmitParams, {"specs": [{"yaml": "x"}]}, "params.specs[0].source must be a string"),
        (p.ValidateParams, {"yaml": "x"}, "params.source must be a string"),
        (p.QuotaSetParams, {"resource": "gpus"}, "quota scope None is not one of"),
        (p.ScheduleParams, {}, "a schedule is named by its id or its name, not None"),
        (p.CacheGcParams, {}, "say what to remove: --older-than, --max-size, or both"),
        (p.CacheGcParams, {"dry_run": True}, "say what to remove"),
        # negative, zero, huge, not a number
        (p.RunParams, {"run": 0}, "a run id is a positive integer, not 0"),
        (p.RunParams, {"run": -5}, "a run id is a positive integer, not -5"),
        (p.RunParams, {"run": 2**63}, "a run id is at most 9223372036854775807, not 9223"),
        (p.RerunParams, {"run": 2**63}, "a run id is at most 9223372036854775807, not 9223"),
        (
            p.ScheduleParams,
            {"schedule": str(2**64)},
            "a schedule id is at most 9223372036854775807",
        ),
        (p.RerunParams, {"run": 0}, "a run id is a positive integer, not 0"),
        (p.ListParams, {"limit": 0}, "params.limit must be an integer from 1 to 100000"),
        (p.ListParams, {"limit": 100_001}, "params.limit must be an integer from 1 to 100000"),
        (p.AuditParams, {"limit": 10**30}, "params.limit must be an integer from 1 to 10000"),
        (p.ScheduleShowParams, {"schedule": 1, "limit": -1}, "params.limit must be an integer"),
        (p.CacheGcParams, {"older_than_s": -1}, "params.older_than_s must be a non-negative"),
        (p.CacheGcParams, {"max_bytes": float("nan")}, "params.max_bytes must be a non-negative"),
        (p.CacheGcParams, {"max_bytes": float("inf")}, "params.max_bytes must be a non-negative"),
        (p.CacheGcParams, {"max_bytes": 10**400}, "params.max_bytes must be a non-negative"),
        (p.QuotaSetParams, {"scope": "lab", "resource": "jobs", "value": -1}, "not -1"),
        (p.QuotaSetParams, {"scope": "lab", "resource": "jobs", "value": 10**7 + 1}, "not 100"),
        (p.SubmitParams, {"specs": []}, "params.specs must be a non-empty list of {yaml, source}"),
        (p.SubmitParams, {"specs": [{}] * 1001}, "at most 1000 specs per request"),
        (p.CodeHaveParams, {"commits": [COMMIT] * 513}, "params.commits must be a list of at most"),
        # unknown keys: refused and named, with the keys the method knows
        (p.RunParams, {"run": 1, "force": True}, "params: unknown key 'force'; known: run"),
        (p.RunParams, {"rnu": 1}, "params: unknown key 'rnu'; known: run"),
        (p.CacheGcParams, {"max_bytes": 1, "dryrun": True}, "unknown key 'dryrun'; known: older"),
        (p.NoParams, {"x": 1}, "params: unknown key 'x'; known: none"),
        (p.ScheduleListParams, {"al": True}, "params: unknown key 'al'; known: all"),
        (p.RerunParams, {"run": 1, "overrides": {}}, "unknown key 'overrides'; known: run, set"),
        (
            p.SubmitParams,
            {"specs": [{**SPEC, "priority": 5}]},
            "params.specs[0]: unknown key 'priority'; known: yaml, source, base_dir, code",
        ),
        (
            p.SubmitParams,
            {"specs": [{**SPEC, "code": {"commit": COMMIT}}]},
            "params.specs[0].code: unknown key 'commit'; known: bundle, checkout, dirty",
        ),
    ],
)
def test_a_bad_request_is_refused_naming_the_field(
    model: type[p.Params], params: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        model.parse(params)
    assert message in caught.value.message
    assert caught.value.exit_code == 2  # the CLI's exit status for bad input


def test_a_refusal_quotes_a_huge_value_briefly() -> None:
    with pytest.raises(InvalidInput) as caught:
        p.RunParams.parse({"run": "x" * 10_000})
    assert len(caught.value.message) < 200 and caught.value.message.endswith("…")
    # an integer over Python's digit limit for str() cannot even be shown (JSON cannot carry
    # one: the protocol refuses it; a caller in the daemon could)
    with pytest.raises(InvalidInput, match="not a number too large to show"):
        p.QuotaSetParams.parse({"scope": "lab", "resource": "jobs", "value": 10**5000})


def test_good_requests_parse_to_typed_values() -> None:
    assert p.ListParams.parse({"states": ["running", "Queued"], "limit": 5}) == p.ListParams(
        states=[RunState.RUNNING, RunState.QUEUED], limit=5
    )
    assert p.ListParams.parse({"states": None}).states is None
    logs = p.LogsParams.parse({"run": 3})
    assert (logs.stream, logs.offset, logs.max_bytes) == ("stdout", 0, 65536)
    assert p.LogsParams.parse({"run": 3, "offset": -4096}).offset == -4096, "a tail"
    assert p.AuditParams.parse({}).limit == 200
    assert p.ScheduleShowParams.parse({"schedule": "12"}).schedule == 12
    assert p.ScheduleParams.parse({"schedule": "nightly"}).schedule == "nightly"
    assert p.ScheduleListParams.parse({"all": True}).include_removed is True
    rerun = p.RerunParams.parse({"run": "a" * 32, "set": {"params.lr": "0.01"}})
    assert (rerun.run, rerun.overrides) == ("a" * 32, {"params.lr": "0.01"})
    assert p.RerunParams.parse({"run": 7}).overrides == {}
    quota = p.QuotaSetParams.parse({"scope": "partition:gpu", "resource": "gpus", "value": None})
    assert quota.value is None, "null is unlimited"
    assert p.QuotaSetParams.parse({"scope": "user:ana", "resource": "jobs", "value": 0}).value == 0


def test_a_submit_carries_each_specs_code_shipment() -> None:
    submit = p.SubmitParams.parse(
        {
            "specs": [
                SPEC,
                {**SPEC, "code": {"bundle": "ab.bundle", "checkout": COMMIT, "dirty": True}},
            ]
        }
    )
    first, second = submit.specs
    assert first.code is None
    assert second.code is not None
    assert second.code.shipment() == Shipment(bundle="ab.bundle", checkout=COMMIT, dirty=True)


def test_cache_gc_sizes_are_whole_bytes() -> None:
    gc = p.CacheGcParams.parse({"max_bytes": 1.9, "older_than_s": 0})
    assert gc.max_size == 1 and gc.older_than_s == 0.0 and gc.dry_run is False
    assert p.CacheGcParams.parse({"older_than_s": 86400}).max_size is None
