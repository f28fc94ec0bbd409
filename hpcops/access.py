"""Who may do what. Identity comes from the operating system (SO_PEERCRED on the socket), never
from anything a client sends; roles come from the config.

    daemon's own account   everything (it owns the database anyway)
    lead                   any priority, hold/release/cancel/retry any run, top, quotas
    member                 submit; priority on own runs within the member range; hold, release,
                           cancel and retry own runs; rerun steps of own pipelines; read
                           everything
    outsider               nothing (with a socket_group set, it cannot even connect)
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from enum import StrEnum

from hpcops.config_sections import AccessConfig
from hpcops.errors import ConfigError, InvalidInput, PermissionDenied


@dataclass(frozen=True)
class Caller:
    """Who asked, as the kernel says."""

    uid: int
    name: str


class Role(StrEnum):
    ADMIN = "admin"
    LEAD = "lead"
    MEMBER = "member"
    OUTSIDER = "outsider"


def unix_groups(name: str) -> frozenset[str]:
    """The Unix groups of a user (primary and supplementary), as the system says now."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return frozenset()
    names = set()
    for gid in os.getgrouplist(name, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return frozenset(names)


def group_gid(name: str) -> int:
    """The gid of the group named by access.socket_group, or a config error naming it."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"access.socket_group: no Unix group {name!r}") from None


def role_of(
    caller: Caller, access: AccessConfig, *, daemon_uid: int, groups: frozenset[str]
) -> Role:
    if caller.uid == daemon_uid:
        return Role.ADMIN
    if caller.name in access.leads:
        return Role.LEAD
    if caller.name in access.members or (
        access.members_group is not None and access.members_group in groups
    ):
        return Role.MEMBER
    return Role.OUTSIDER


LEADS = (Role.ADMIN, Role.LEAD)

# action -> (roles allowed on any run, roles allowed on their own runs only)
_RULES: dict[str, tuple[tuple[Role, ...], tuple[Role, ...]]] = {
    "read": ((Role.ADMIN, Role.LEAD, Role.MEMBER), ()),
    "submit": ((Role.ADMIN, Role.LEAD, Role.MEMBER), ()),
    "priority": (LEADS, (Role.MEMBER,)),
    "hold": (LEADS, (Role.MEMBER,)),
    "release": (LEADS, (Role.MEMBER,)),
    "cancel": (LEADS, (Role.MEMBER,)),
    # a new attempt of an ended run (`hpcops retry`): its owner's, or a lead's
    "retry": (LEADS, (Role.MEMBER,)),
    # run a pipeline's step again (`hpcops rerun p3.train`): its new runs join the pipeline,
    # so the pipeline's owner, or a lead
    "rerun_step": (LEADS, (Role.MEMBER,)),
    "top": (LEADS, ()),
    "quota": (LEADS, ()),
    "cache": (LEADS, ()),
    # pause, resume, remove, run-now: a schedule's owner, or a lead
    "schedule": (LEADS, (Role.MEMBER,)),
}

_WHAT = {
    "read": "read the lab's queue",
    "submit": "submit runs",
    "priority": "change the priority of",
    "hold": "hold",
    "release": "release",
    "cancel": "cancel",
    "retry": "retry",
    "rerun_step": "rerun steps of",
    "top": "move runs to the top of the queue",
    "quota": "change quotas",
    "cache": "remove data from the lab's cache",
    "schedule": "change",
}


def authorize(
    action: str, caller: Caller, role: Role, *, owner: str | None = None, thing: str = "run"
) -> None:
    """Raise PermissionDenied, naming the role the request needs, unless `role` may do it.
    `thing` is what `owner` owns, for the message ("run", "schedule")."""
    anyone, own_only = _RULES[action]
    if role in anyone:
        return
    if role in own_only and owner is not None and owner == caller.name:
        return
    if role is Role.OUTSIDER:
        raise PermissionDenied(
            f"{caller.name} is not a member of this lab; ask a group lead to add you "
            "(access.members or access.members_group in the daemon's config)"
        )
    if own_only and owner is not None:
        raise PermissionDenied(
            f"{caller.name} may {_WHAT[action]} only their own {thing}s; this {thing} belongs "
            f"to {owner}. It needs the lead role."
        )
    raise PermissionDenied(f"only a group lead may {_WHAT[action]}; {caller.name} is a {role}")


def check_priority(value: int, role: Role, access: AccessConfig) -> None:
    """Members choose priorities within the member range; leads choose any."""
    if role in LEADS:
        if not -1000 <= value <= 1000:
            raise InvalidInput(f"priority {value} is out of range; allowed: -1000 to 1000")
        return
    low, high = access.member_priority_min, access.member_priority_max
    if not low <= value <= high:
        raise PermissionDenied(
            f"priority {value} is outside the member range {low} to {high}; a group lead can set it"
        )
