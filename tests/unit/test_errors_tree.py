"""Every exception class in hpcops derives from HpcopsError and is drawn in errors.py's tree.

The CLI catches one root and prints one message (exit code on the class); a class outside the tree
reaches the user as a traceback, and a class missing from the drawing is one nobody reading
errors.py knows about. Read with `ast`, nothing imported: a class defined inside a function or
behind an import nobody makes yet still counts.

The drawing is the block of lines in errors.py's docstring from `HpcopsError` to the first blank
line: a name at depth d is written after `├── ` or `└── ` at column 4 + 4 * (d - 1). A class is
matched by name, not by module, so moving one (spec.py → yamlio.py) keeps the tree valid; two
exception classes of the same name anywhere in the package are refused for that reason.
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hpcops"
ERRORS = PACKAGE / "errors.py"
ROOT = "HpcopsError"

_BRANCH = re.compile(r"^    (?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>\w+)")
_BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)


@dataclass(frozen=True)
class ClassDef:
    name: str
    where: str  # hpcops/x/y.py:LINE
    bases: tuple[str, ...]  # each base's last dotted part: `paramiko.SSHException` → SSHException


def drawn_tree(docstring: str) -> dict[str, str | None]:
    """{class name: its parent's name} as drawn, the root's parent None. Raises on a bad drawing."""
    lines = docstring.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"    {ROOT} "))
    parents: dict[str, str | None] = {ROOT: None}
    path = [ROOT]  # path[d] is the last name drawn at depth d
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = _BRANCH.match(line)
        if match is None:
            continue  # a description that goes on over more than one line
        depth = len(match["indent"]) // 4 + 1
        assert depth <= len(path), f"errors.py's tree skips a level at: {line.strip()}"
        name = match["name"]
        assert name not in parents, f"errors.py's tree draws {name} twice"
        parents[name] = path[depth - 1]
        del path[depth:]
        path.append(name)
    return parents


def package_classes(package: Path = PACKAGE) -> list[ClassDef]:
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(rel))):
            if isinstance(node, ast.ClassDef):
                bases = tuple(
                    base.id if isinstance(base, ast.Name) else base.attr
                    for base in node.bases
                    if isinstance(base, ast.Name | ast.Attribute)
                )
                found.append(ClassDef(node.name, f"{rel}:{node.lineno}", bases))
    return found


def exception_classes(classes: list[ClassDef]) -> list[ClassDef]:
    """The classes that derive, through any chain inside the package, from a builtin exception
    or from a foreign class named like one (`SSHException`, `YAMLError`)."""
    names = {c.name for c in classes}
    exceptions: set[str] = set()
    changed = True
    while changed:
        changed = False
        for c in classes:
            if c.name in exceptions:
                continue
            for base in c.bases:
                foreign_exception = base not in names and base.endswith(("Error", "Exception"))
                if base in _BUILTIN_EXCEPTIONS or base in exceptions or foreign_exception:
                    exceptions.add(c.name)
                    changed = True
                    break
    return [c for c in classes if c.name in exceptions]


def tree_problems(drawn: dict[str, str | None], classes: list[ClassDef]) -> list[str]:
    """Every way the package's exception classes and the drawn tree disagree, one line each."""
    found = exception_classes(classes)
    problems = []
    by_name: dict[str, list[ClassDef]] = {}
    for c in found:
        by_name.setdefault(c.name, []).append(c)
    for name, defs in by_name.items():
        if len(defs) > 1:
            where = ", ".join(d.where for d in defs)
            problems.append(f"{name} is defined {len(defs)} times ({where}); name each its own way")
    for c in found:
        package_bases = [b for b in c.bases if b in by_name]
        if c.name not in drawn:
            problems.append(
                f"{c.where}: {c.name} is an exception class missing from the tree in "
                f"hpcops/errors.py's docstring; draw it there under its parent"
            )
        elif c.name == ROOT:
            if c.bases != ("Exception",):
                problems.append(f"{c.where}: {ROOT} must derive from Exception alone")
        elif not package_bases:
            problems.append(
                f"{c.where}: {c.name}({', '.join(c.bases)}) is outside the tree: derive it from "
                f"{drawn[c.name]} (drawn as its parent), so the CLI's one catch of {ROOT} sees it"
            )
        elif package_bases != [drawn[c.name]]:
            problems.append(
                f"{c.where}: {c.name} derives from {', '.join(package_bases)} but the tree in "
                f"hpcops/errors.py draws it under {drawn[c.name]}"
            )
    for name in drawn:
        if name not in by_name:
            problems.append(
                f"hpcops/errors.py's tree draws {name}, which is no exception class in hpcops "
                f"(renamed or removed?)"
            )
    return problems


@pytest.fixture(scope="module")
def classes() -> list[ClassDef]:
    return package_classes()


def test_every_exception_class_is_in_the_drawn_tree(classes: list[ClassDef]) -> None:
    docstring = ast.get_docstring(ast.parse(ERRORS.read_text(encoding="utf-8")))
    assert docstring is not None, "hpcops/errors.py has lost its docstring (the tree)"
    problems = tree_problems(drawn_tree(docstring), classes)
    assert not problems, "\n".join(problems)


def test_the_walk_sees_the_classes_it_must(classes: list[ClassDef]) -> None:
    """Guards the walk itself: a class it cannot see would pass the test above vacuously."""
    names = {c.name for c in exception_classes(classes)}
    assert {ROOT, "SpecError", "SlurmLimited", "TransportError", "GitError"} <= names
    assert "Config" not in names  # a pydantic model, not an exception


def test_the_drawing_is_read_as_drawn() -> None:
    drawing = "\n".join(
        [
            "Intro.",
            "",
            f"    {ROOT}    root",
            "    ├── A         a",
            "    │   └── B         b, whose description",
            "    │                 goes on",
            "    └── C         c",
            "        └── D         d",
            "",
            "    ├── NotInTheTree",
        ]
    )
    assert drawn_tree(drawing) == {ROOT: None, "A": ROOT, "B": "A", "C": ROOT, "D": "C"}


def test_each_disagreement_is_named() -> None:
    drawn: dict[str, str | None] = {ROOT: None, "A": ROOT, "B": ROOT, "Gone": ROOT}
    classes = [
        ClassDef(ROOT, "hpcops/errors.py:1", ("Exception",)),
        ClassDef("A", "hpcops/a.py:2", (ROOT,)),
        ClassDef("B", "hpcops/b.py:3", ("A",)),  # drawn under the root
        ClassDef("Stray", "hpcops/x.py:4", ("ValueError",)),  # not drawn
        ClassDef("A", "hpcops/c.py:5", (ROOT,)),  # a second A
        ClassDef("Foreign", "hpcops/y.py:6", ("SSHException",)),  # not drawn, outside the root
        ClassDef("Model", "hpcops/z.py:7", ("BaseModel",)),  # no exception: ignored
    ]
    problems = "\n".join(tree_problems(drawn, classes))
    assert "A is defined 2 times (hpcops/a.py:2, hpcops/c.py:5)" in problems
    assert "hpcops/b.py:3: B derives from A but the tree in hpcops/errors.py draws it under" in (
        problems
    )
    assert "hpcops/x.py:4: Stray is an exception class missing from the tree" in problems
    assert "hpcops/y.py:6: Foreign is an exception class missing from the tree" in problems
    assert "draws Gone, which is no exception class" in problems
    assert "Model" not in problems


def test_an_exception_drawn_but_outside_the_root_is_named() -> None:
    drawn: dict[str, str | None] = {ROOT: None, "Loose": ROOT}
    classes = [
        ClassDef(ROOT, "hpcops/errors.py:1", ("Exception",)),
        ClassDef("Loose", "hpcops/l.py:9", ("Exception",)),
    ]
    assert tree_problems(drawn, classes) == [
        f"hpcops/l.py:9: Loose(Exception) is outside the tree: derive it from {ROOT} (drawn as "
        f"its parent), so the CLI's one catch of {ROOT} sees it"
    ]
