"""Moving references in a spec, pinned at firing time.

A schedule keeps its spec as it was added; a retraining must use the newest code and data. Every
firing passes the spec through `resolve_moving_refs` before its run is queued, so the run records
the commit (and, with data staging, the data version) current at that firing.
"""

from __future__ import annotations

from hpcops.spec import Spec


def resolve_moving_refs(spec: Spec) -> Spec:
    """The spec with every moving reference (a code branch or tag, a data revision) replaced by
    what it points to now.

    Identity for now: specs have no reference that moves yet. The spec's `code: {repo, ref}`
    block (being added on main) is resolved here when it is merged, and the DVC data revision
    once data staging exists. The firing path (service.ScheduleService.fire) calls this and
    nothing else for it, before the run is checked and queued.
    """
    return spec
