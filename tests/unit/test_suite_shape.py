"""The suite's own shape: pytest imports test modules by basename (the tiers share one
sys.path), so two test files of one name break the collection of the cluster tier."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_name_is_unique_across_both_tiers() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py") if "__pycache__" not in p.parts)
    clashes = sorted(name for name, count in names.items() if count > 1)
    assert not clashes, f"test modules sharing a name (rename one): {clashes}"
