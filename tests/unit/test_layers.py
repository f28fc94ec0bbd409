"""The import-layer rule: each module of hpcops imports only from its own layer and from lower ones.

The package is read with `ast`, nothing imported, so the rule costs no start-up and sees every
import: at the top of a module, inside a function (the heavy ones, loaded where used) and under
`if TYPE_CHECKING:`. Imports under TYPE_CHECKING count like any other: a signature that names a
higher layer's type ties the lower layer to it all the same, and hiding an import from the runtime
is the usual way to paper over the very cycle this rule forbids.

LAYERS (below) is the architecture, top to bottom, one tuple per height; README.md's
"Architecture" section draws the same list. Layers that share a height are peers: they may
import one another, as long as the imports between layers never form a cycle (checked as well).
LAYER_OF maps every module to its layer by the longest dotted prefix; a module that no prefix
names fails the test: add it to the table rather than guess its place.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "hpcops"

LAYERS: list[tuple[str, ...]] = [
    ("cli",),  # click commands, by command group
    ("daemon",),  # the one factory: builds every collaborator, starts and stops the daemon
    ("client", "api"),  # laptop side (socket/SSH client, relay, code shipping) | the daemon's API
    ("scheduling",),  # APScheduler service: firings become runs through the engine's methods
    ("engine",),  # the run engine: gathers inputs, calls decisions, records outcomes
    ("jobcontext", "lifecycle", "retries", "policy", "tracking", "data"),
    ("code",),  # git, the code mirror, the laptop's workspace pinning
    ("store",),  # the database, behind a facade
    ("slurm",),  # command builders, parsers, the backend
    ("transport",),  # local and SSH: run a command, read and write a file
    ("render",),  # jinja2: a spec and a JobContext become the sbatch script
    ("pipeline",),  # a pipeline file and its step graph: on spec, below all that queues or runs
    (
        "spec",
        "config",
        "access",
        "protocol",
        "cadence",
        "yamlio",
        "units",
        "names",
        "describe",
        "rundir",
        "states",
        "backoff",
        "home",
    ),
    ("errors", "version"),  # `version` is hpcops/__init__.py: __version__ and nothing else
]

# Module (dotted, without the leading `hpcops.`) → layer. The longest matching prefix wins:
# `api.protocol` is the wire format both sides speak, a layer of its own below client and api.
# The root package `hpcops` is matched only exactly (ROOT_LAYER), never as everyone's prefix.
LAYER_OF: dict[str, str] = {
    "__main__": "cli",
    "cli": "cli",
    "daemon": "daemon",
    "client": "client",
    "api": "api",
    "api.protocol": "protocol",
    "scheduling": "scheduling",
    "engine": "engine",
    "jobcontext": "jobcontext",
    "lifecycle": "lifecycle",
    "settling": "lifecycle",  # sacct's record of an ended job: the run's final state
    "retries": "retries",
    "policy": "policy",
    "tracking": "tracking",
    "data": "data",
    "code": "code",
    "store": "store",
    "slurm": "slurm",
    "transport": "transport",
    "render": "render",
    "arrayscript": "render",  # a sweep's job array: its header and a dispatch per task
    "pipeline": "pipeline",
    "spec": "spec",
    "specfile": "spec",  # a spec file's plain data and its paths, without the model
    "config": "config",
    "config_sections": "config",
    "access": "access",
    "cadence": "cadence",
    "yamlio": "yamlio",
    "units": "units",
    "names": "names",
    "describe": "describe",  # how a value is named in a message (the spec carving adds it)
    "rundir": "rundir",
    "states": "states",
    "backoff": "backoff",
    "home": "home",
    "errors": "errors",
}
ROOT_LAYER = "version"

# Imports that break the target today, each with its reason. Every entry must still occur (a
# fixed one fails the test until its line is deleted), so this list only shrinks.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {
    # (importing module, imported module): why it is still here
}

# Layer pairs kept apart although the first sits above the second: an import between them is a
# violation unless the importing module is exempt. (Layer heights alone cannot say this.)
APART: dict[tuple[str, str], tuple[frozenset[str], str]] = {
    ("data", "store"): (
        frozenset({"hpcops.data.gc"}),  # the data-cache garbage collection reads the runs' use
        "data/ runs inside the staging job on compute nodes and reads no store tables",
    ),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (a package's name for its __init__)
    where: str  # hpcops/x.py:LINE
    type_only: bool  # under `if TYPE_CHECKING:`


def height_of(layer: str) -> int:
    """0 at the top (cli); larger is lower."""
    for height, layers in enumerate(LAYERS):
        if layer in layers:
            return height
    raise AssertionError(f"layer {layer!r} is in LAYER_OF but not in LAYERS")


def layer_of(module: str) -> str | None:
    if module == PACKAGE:
        return ROOT_LAYER
    parts = module.split(".")[1:]
    for end in range(len(parts), 0, -1):
        layer = LAYER_OF.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    return None


def modules(root: Path = REPO) -> dict[str, Path]:
    """Every module of the package, dotted name → file."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of every node under an `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def imports_of(module: str, path: Path, known: set[str], root: Path = REPO) -> Iterator[Import]:
    """Every hpcops.* import in the module, wherever it sits; `from X import name` counts as an
    import of X.name when that is a module, else of X."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    type_only = _type_checking_blocks(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = path.relative_to(root)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.append(candidate if candidate in known else base)
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                yield Import(module, target, f"{rel}:{node.lineno}", id(node) in type_only)


def all_imports(root: Path = REPO) -> list[Import]:
    found = modules(root)
    known = set(found)
    return [imp for module, path in found.items() for imp in imports_of(module, path, known, root)]


def unmapped_modules(found: dict[str, Path], root: Path = REPO) -> list[str]:
    return [
        f"{module} ({path.relative_to(root)}) is in no layer: add it to LAYER_OF in "
        f"tests/unit/test_layers.py (and to README.md's architecture section)"
        for module, path in found.items()
        if layer_of(module) is None
    ]


def layer_violations(imports: list[Import]) -> list[str]:
    """Imports from a higher layer, or between layers kept apart, not on the known list."""
    problems = []
    for imp in imports:
        low, high = layer_of(imp.module), layer_of(imp.target)
        if low is None or high is None:
            if high is None:
                problems.append(
                    f"{imp.where}: {imp.module} imports {imp.target}, which is in no layer: add "
                    f"it to LAYER_OF in tests/unit/test_layers.py"
                )
            continue  # an unmapped importer is reported by unmapped_modules
        why = ""
        if height_of(high) < height_of(low):
            why = f"{high} sits above {low}"
        elif (low, high) in APART and imp.module not in APART[(low, high)][0]:
            why = f"{low} and {high} are kept apart: {APART[(low, high)][1]}"
        if why and _known(imp) is None:
            kind = " (under TYPE_CHECKING, which counts)" if imp.type_only else ""
            problems.append(
                f"{imp.where}: {imp.module} (layer {low}) imports {imp.target} (layer {high})"
                f"{kind}: {why}"
            )
    return problems


def _known(imp: Import) -> tuple[str, str] | None:
    for importer, imported in KNOWN_VIOLATIONS:
        if imp.module == importer and (
            imp.target == imported or imp.target.startswith(imported + ".")
        ):
            return importer, imported
    return None


def stale_known_violations(imports: list[Import]) -> list[str]:
    seen = {_known(imp) for imp in imports}
    return [
        f"KNOWN_VIOLATIONS lists {importer} → {imported}, which no longer happens: delete the entry"
        for importer, imported in KNOWN_VIOLATIONS
        if (importer, imported) not in seen
    ]


def layer_cycles(imports: list[Import]) -> list[str]:
    """Every cycle in the graph of layer → layer imports, known violations included, each with
    one import that makes each of its edges."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        low, high = layer_of(imp.module), layer_of(imp.target)
        if low is not None and high is not None and low != high:
            edges.setdefault(low, {}).setdefault(high, imp)
    problems = []
    for component in _strongly_connected(edges):
        if len(component) < 2:
            continue
        lines = [
            f"  {a} → {b}: {edges[a][b].where}: {edges[a][b].module} imports {edges[a][b].target}"
            for a in sorted(component)
            for b in sorted(edges.get(a, {}))
            if b in component
        ]
        problems.append(
            f"the layers {', '.join(sorted(component))} import one another in a cycle:\n"
            + "\n".join(lines)
        )
    return problems


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative; the graph has a few dozen nodes."""
    nodes = set(edges) | {b for targets in edges.values() for b in targets}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


# ─── the rule, on today's package ───────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def package_imports() -> list[Import]:
    return all_imports()


def test_every_module_is_in_a_layer() -> None:
    problems = unmapped_modules(modules())
    assert not problems, "\n".join(problems)


def test_no_module_imports_from_a_higher_layer(package_imports: list[Import]) -> None:
    problems = layer_violations(package_imports)
    assert not problems, "\n".join(problems)


def test_no_cycle_between_layers(package_imports: list[Import]) -> None:
    problems = layer_cycles(package_imports)
    assert not problems, "\n\n".join(problems)


def test_known_violations_are_still_real(package_imports: list[Import]) -> None:
    problems = stale_known_violations(package_imports)
    assert not problems, "\n".join(problems)


def test_the_table_is_consistent() -> None:
    named = [layer for layers in LAYERS for layer in layers]
    assert len(named) == len(set(named)), "a layer is listed twice in LAYERS"
    for layer in [*LAYER_OF.values(), ROOT_LAYER]:
        height_of(layer)
    unused = set(named) - set(LAYER_OF.values()) - {ROOT_LAYER}
    assert not unused, f"layers no module maps to: {sorted(unused)}"


def test_the_readme_draws_the_same_layers() -> None:
    """README.md's architecture section shows the layers as the code block after "The layers,
    top to bottom": one line per height, peers separated by ` | `, a parenthesis is a comment."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    after = readme.split("The layers, top to bottom", 1)[1]
    block = after.split("```\n", 2)[1]
    drawn = [
        tuple(part.split("(")[0].strip() for part in line.split(" | "))
        for line in block.splitlines()
        if line.strip()
    ]
    assert drawn == LAYERS, "README.md's layer list and LAYERS in tests/unit/test_layers.py differ"


def test_the_walk_sees_imports_everywhere(package_imports: list[Import]) -> None:
    """Guards the walk itself: an import it missed would pass the rule vacuously."""
    imports = package_imports
    pairs = {(imp.module, imp.target) for imp in imports}
    assert ("hpcops.slurm.parse", "hpcops.states") in pairs  # top level
    # inside a function (the daemon loads the tracker where it is used)
    assert ("hpcops.daemon", "hpcops.tracking.worker") in pairs
    assert any(imp.type_only for imp in imports)  # under TYPE_CHECKING
    # `from hpcops.slurm import commands` is an import of the module, not of the package
    assert ("hpcops.slurm.backend", "hpcops.slurm.commands") in pairs


# ─── the checker, on made-up packages ───────────────────────────────────────────────────────────


def _package(tmp_path: Path, files: dict[str, str]) -> list[Import]:
    for name, text in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return all_imports(tmp_path)


def test_an_upward_import_names_module_import_and_layers(tmp_path: Path) -> None:
    imports = _package(
        tmp_path,
        {
            "__init__.py": "",
            "states.py": "def f():\n    from hpcops.engine.loop import Engine\n",
            "engine/__init__.py": "",
            "engine/loop.py": "from hpcops import states\n",
        },
    )
    assert layer_violations(imports) == [
        "hpcops/states.py:2: hpcops.states (layer states) imports hpcops.engine.loop "
        "(layer engine): engine sits above states"
    ]


def test_type_checking_imports_count(tmp_path: Path) -> None:
    imports = _package(
        tmp_path,
        {
            "__init__.py": "",
            "store/__init__.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from ..engine import Engine\n"
            ),
            "engine.py": "",
        },
    )
    (problem,) = layer_violations(imports)
    expected = "imports hpcops.engine (layer engine) (under TYPE_CHECKING, which counts)"
    assert problem.startswith("hpcops/store/__init__.py:3: hpcops.store (layer store) ")
    assert expected in problem


def test_relative_imports_resolve(tmp_path: Path) -> None:
    imports = _package(
        tmp_path,
        {
            "__init__.py": "",
            "api/__init__.py": "from . import protocol\n",
            "api/protocol.py": "from .. import errors\nfrom ..errors import X\n",
            "api/server.py": "from .protocol import encode\nfrom . import views\n",
            "api/views.py": "",
            "errors.py": "",
        },
    )
    assert {(imp.module, imp.target) for imp in imports} == {
        ("hpcops.api", "hpcops.api.protocol"),
        ("hpcops.api.protocol", "hpcops.errors"),
        ("hpcops.api.server", "hpcops.api.protocol"),
        ("hpcops.api.server", "hpcops.api.views"),
    }


def test_a_cycle_between_peers_is_named(tmp_path: Path) -> None:
    imports = _package(
        tmp_path,
        {
            "__init__.py": "",
            "spec.py": "import hpcops.config\n",
            "config.py": "from hpcops.units import parse_mem_mb\n",
            "units.py": "from hpcops.spec import Spec\n",
        },
    )
    assert not layer_violations(imports)  # peers may import one another...
    (problem,) = layer_cycles(imports)  # ...but not round in a circle
    assert problem.startswith("the layers config, spec, units import one another in a cycle:")
    assert "  units → spec: hpcops/units.py:1: hpcops.units imports hpcops.spec" in problem


def test_layers_kept_apart(tmp_path: Path) -> None:
    imports = _package(
        tmp_path,
        {
            "__init__.py": "",
            "data/__init__.py": "",
            "data/stage.py": "from hpcops.store import Run\n",
            "data/gc.py": "from hpcops.store import Run\n",
            "store/__init__.py": "",
        },
    )
    (problem,) = layer_violations(imports)
    assert problem.startswith("hpcops/data/stage.py:1: hpcops.data.stage (layer data) imports")
    assert "data and store are kept apart" in problem


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("hpcops", "version"),
        ("hpcops.api.server", "api"),
        ("hpcops.api.protocol", "protocol"),
        ("hpcops.api.handlers.runs", "api"),
        ("hpcops.engine.submit", "engine"),
        ("hpcops.scheduling.service", "scheduling"),
        ("hpcops.client.ship", "client"),
        ("hpcops.spec.model", "spec"),
        ("hpcops.nowhere", None),
    ],
)
def test_modules_map_by_longest_prefix(module: str, layer: str | None) -> None:
    assert layer_of(module) == layer
