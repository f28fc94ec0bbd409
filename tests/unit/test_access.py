"""Roles and permissions, as pure functions of the caller, the config and the run's owner."""

from __future__ import annotations

import pytest

from hpcops.access import Caller, Role, authorize, check_priority, role_of
from hpcops.config_sections import AccessConfig
from hpcops.errors import InvalidInput, PermissionDenied

ACCESS = AccessConfig(
    members_group="lab",
    members=["dave"],
    leads=["carol"],
    member_priority_min=-10,
    member_priority_max=10,
)
ALICE = Caller(uid=1001, name="alice")
CAROL = Caller(uid=1003, name="carol")


@pytest.mark.parametrize(
    ("caller", "groups", "role"),
    [
        (Caller(uid=500, name="svc"), frozenset(), Role.ADMIN),
        (CAROL, frozenset(), Role.LEAD),
        (ALICE, frozenset({"lab"}), Role.MEMBER),
        (Caller(uid=1004, name="dave"), frozenset(), Role.MEMBER),
        (Caller(uid=1005, name="eve"), frozenset({"other"}), Role.OUTSIDER),
    ],
)
def test_roles(caller: Caller, groups: frozenset[str], role: Role) -> None:
    assert role_of(caller, ACCESS, daemon_uid=500, groups=groups) is role


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_members_act_on_their_own_runs_only(action: str) -> None:
    authorize(action, ALICE, Role.MEMBER, owner="alice")
    with pytest.raises(
        PermissionDenied, match=f"may {action} only their own runs; this run belongs to bob"
    ):
        authorize(action, ALICE, Role.MEMBER, owner="bob")
    authorize(action, CAROL, Role.LEAD, owner="bob")


def test_a_pipelines_steps_are_rerun_by_its_owner_or_a_lead() -> None:
    authorize("rerun_step", ALICE, Role.MEMBER, owner="alice", thing="pipeline")
    with pytest.raises(
        PermissionDenied,
        match="alice may rerun steps of only their own pipelines; this pipeline belongs to bob",
    ):
        authorize("rerun_step", ALICE, Role.MEMBER, owner="bob", thing="pipeline")
    authorize("rerun_step", CAROL, Role.LEAD, owner="bob", thing="pipeline")


@pytest.mark.parametrize("action", ["top", "quota"])
def test_lead_only_actions_name_the_role(action: str) -> None:
    with pytest.raises(PermissionDenied, match="only a group lead may"):
        authorize(action, ALICE, Role.MEMBER, owner="alice")
    authorize(action, CAROL, Role.LEAD)


def test_outsiders_may_do_nothing() -> None:
    with pytest.raises(PermissionDenied, match="not a member of this lab"):
        authorize("read", Caller(uid=9, name="eve"), Role.OUTSIDER)


def test_priority_ranges() -> None:
    check_priority(10, Role.MEMBER, ACCESS)
    with pytest.raises(PermissionDenied, match="outside the member range -10 to 10"):
        check_priority(11, Role.MEMBER, ACCESS)
    check_priority(900, Role.LEAD, ACCESS)
    with pytest.raises(InvalidInput):
        check_priority(5000, Role.LEAD, ACCESS)
