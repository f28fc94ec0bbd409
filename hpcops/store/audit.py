"""The audit log (every request that changes something, and every refusal) and the quotas leads
set at run time."""

from __future__ import annotations

from sqlmodel import col, select

from hpcops.store.engine import Database
from hpcops.store.models import Audit, QuotaOverride


class AuditTables(Database):
    """The audit and quota-override tables."""

    def audit(self, *entries: Audit) -> None:
        """Append entries to the log, in one transaction (a submit of 200 specs: one commit)."""
        with self._session() as session:
            session.add_all(entries)

    def audit_log(self, *, limit: int = 200, target: str | None = None) -> list[Audit]:
        query = select(Audit)
        if target is not None:
            query = query.where(Audit.target == target)
        query = query.order_by(col(Audit.id).desc()).limit(limit)
        with self._session() as session:
            return list(session.exec(query).all())

    def quota_overrides(self) -> list[QuotaOverride]:
        with self._session() as session:
            return list(session.exec(select(QuotaOverride)).all())

    def set_quota(self, override: QuotaOverride) -> QuotaOverride | None:
        """Store an override; return the one it replaced."""
        with self._session() as session:
            old = session.get(QuotaOverride, (override.scope, override.resource))
            before = QuotaOverride.model_validate(old.model_dump()) if old else None
            if old is not None:
                session.delete(old)
                session.flush()
            session.add(override)
        return before
