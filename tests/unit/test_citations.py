"""Evidence cited in the repository is in the repository.

Comments and docstrings that give a reason cite where it was measured or decided. Those notes
live in docs/ (design.md, notes-slurm.md, notes-stack.md); the working copies they started from
(NOTES-SLURM, NOTES-STACK, DESIGN.md, STYLE.md) are outside the repository, so a citation of them
is one no reader of hpcops can follow. This test fails on such a citation, and on a citation of a
docs/ file that does not exist.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("hpcops", "scripts", "tests", "sbatch_templates", "configs", ".ci", "docs")
SCANNED_FILES = ("README.md", "pyproject.toml")
SKIPPED = (
    "tests/benchmarks/results",  # measurements, not prose
    "tests/fixtures",  # captured output, kept byte for byte
    "tests/unit/test_citations.py",  # names the outside documents to refuse them
)
OUTSIDE = re.compile(r"\bNOTES(?:-SLURM|-STACK)?\b|\bDESIGN\.md\b|\bSTYLE\.md\b")
DOCS_LINK = re.compile(r"\bdocs/[\w./-]+\.md\b")

# Files that still cite an outside document, waiting for the replacement text. A file that no
# longer cites one fails the test until its line is deleted, so this list only shrinks; it is
# empty now, and a new citation of an outside document fails at once.
STILL_CITING_OUTSIDE: set[str] = set()


def scanned_files() -> list[Path]:
    found = [REPO / name for name in SCANNED_FILES]
    for top in SCANNED:
        found += [p for p in (REPO / top).rglob("*") if p.is_file()]
    return [
        p
        for p in found
        if "__pycache__" not in p.parts
        and not str(p.relative_to(REPO)).startswith(SKIPPED)
        and p.suffix not in {".pyc", ".json", ".bundle"}
    ]


def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def test_no_citation_of_a_document_outside_the_repository() -> None:
    problems = []
    citing = set()
    for path in scanned_files():
        rel = str(path.relative_to(REPO))
        for number, line in enumerate(_text(path).splitlines(), 1):
            match = OUTSIDE.search(line)
            if match is None:
                continue
            citing.add(rel)
            if rel not in STILL_CITING_OUTSIDE:
                problems.append(
                    f"{rel}:{number}: cites {match[0]}, which is outside the repository; cite "
                    f"docs/design.md, docs/notes-slurm.md or docs/notes-stack.md (add the fact "
                    f"there, in our words, if it is missing)"
                )
    problems += [
        f"{rel} no longer cites an outside document: delete it from STILL_CITING_OUTSIDE"
        for rel in sorted(STILL_CITING_OUTSIDE - citing)
        if (REPO / rel).exists()
    ]
    assert not problems, "\n".join(problems)


def test_every_cited_doc_exists() -> None:
    problems = [
        f"{path.relative_to(REPO)}:{number}: cites {link}, which does not exist"
        for path in scanned_files()
        for number, line in enumerate(_text(path).splitlines(), 1)
        for link in DOCS_LINK.findall(line)
        if not (REPO / link).is_file()
    ]
    assert not problems, "\n".join(problems)


def test_the_docs_are_there() -> None:
    for name in ("design.md", "notes-slurm.md", "notes-stack.md"):
        assert (REPO / "docs" / name).is_file()
