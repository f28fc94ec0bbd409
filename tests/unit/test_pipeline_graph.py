"""hpcops.pipeline.graph: the step graph's pure decisions, table by table, then over random DAGs."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from hpcops.pipeline import (
    Graph,
    ancestors,
    doomed,
    downstream,
    find_cycle,
    ready,
    topological_order,
)
from hpcops.states import RunState

Q, H, R, C = RunState.QUEUED, RunState.HELD, RunState.RUNNING, RunState.COMPLETED
F, X, U = RunState.FAILED, RunState.CANCELLED, RunState.UNKNOWN

# The pipeline: prepare -> train -> evaluate -> promote.
CHAIN: Graph = {
    "prepare": (),
    "train": ("prepare",),
    "evaluate": ("train",),
    "promote": ("evaluate",),
}
# Two branches that meet: a -> (b, c) -> d; e stands alone.
DIAMOND: Graph = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        (CHAIN, None),
        (DIAMOND, None),
        ({"a": ("a",)}, ["a", "a"]),
        ({"a": ("b",), "b": ("a",)}, ["a", "b", "a"]),
        ({"p": (), "t": ("p", "e"), "e": ("t",)}, ["t", "e", "t"]),
        ({"x": (), "a": ("x", "c"), "b": ("a",), "c": ("b",)}, ["a", "c", "b", "a"]),
        ({"a": ("nowhere",)}, None),  # an unknown step has its own message
    ],
)
def test_find_cycle(graph: Graph, cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_find_cycle_walks_a_long_chain_without_recursion() -> None:
    graph = {f"s{i}": (f"s{i - 1}",) if i else () for i in range(5000)}
    assert find_cycle(graph) is None
    graph["s0"] = ("s4999",)
    cycle = find_cycle(graph)
    assert cycle is not None and len(cycle) == 5001


@pytest.mark.parametrize(
    ("graph", "order"),
    [
        (CHAIN, ["prepare", "train", "evaluate", "promote"]),
        (DIAMOND, ["a", "b", "c", "d", "e"]),
        # written children first: each still follows its parents; free steps keep file order
        ({"promote": ("train",), "train": ("prep",), "prep": (), "lint": ()}, None),
    ],
)
def test_topological_order(graph: Graph, order: list[str] | None) -> None:
    found = topological_order(graph)
    if order is not None:
        assert found == order
    assert sorted(found) == sorted(graph)
    for step, parents in graph.items():
        assert all(found.index(p) < found.index(step) for p in parents)


def test_topological_order_refuses_a_cycle() -> None:
    with pytest.raises(ValueError, match=r"a cycle: a -> b -> a"):
        topological_order({"a": ("b",), "b": ("a",)})


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"prepare": Q, "train": Q, "evaluate": Q, "promote": Q}, ["prepare"]),
        ({"prepare": R, "train": Q, "evaluate": Q, "promote": Q}, []),
        ({"prepare": C, "train": Q, "evaluate": Q, "promote": Q}, ["train"]),
        ({"prepare": C, "train": H, "evaluate": Q, "promote": Q}, ["train"]),  # hold is the user's
        ({"prepare": C, "train": C, "evaluate": C, "promote": C}, []),
        ({"prepare": F, "train": Q, "evaluate": Q, "promote": Q}, []),
        ({"train": Q}, []),  # a parent without a state is not COMPLETED
    ],
)
def test_ready_on_a_chain(states: dict[str, RunState], expected: list[str]) -> None:
    assert ready(CHAIN, states) == expected


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"a": C, "b": C, "c": R, "d": Q, "e": Q}, ["e"]),
        ({"a": C, "b": C, "c": C, "d": Q, "e": R}, ["d"]),
        ({"a": C, "b": Q, "c": Q, "d": Q, "e": Q}, ["b", "c", "e"]),
    ],
)
def test_ready_waits_for_every_parent(states: dict[str, RunState], expected: list[str]) -> None:
    assert ready(DIAMOND, states) == expected


@pytest.mark.parametrize(
    ("graph", "states", "expected"),
    [
        (
            CHAIN,
            {"prepare": C, "train": F, "evaluate": Q, "promote": Q},
            {
                "evaluate": "waits for train, which FAILED",
                "promote": "waits for train (through evaluate), which FAILED",
            },
        ),
        # a step the daemon already cancelled for its parent: the reason names the first cause
        (
            CHAIN,
            {"prepare": C, "train": F, "evaluate": X, "promote": Q},
            {"promote": "waits for train (through evaluate), which FAILED"},
        ),
        (CHAIN, {"prepare": U, "train": H, "evaluate": Q, "promote": Q}, None),
        (CHAIN, {"prepare": C, "train": R, "evaluate": Q, "promote": Q}, {}),
        (CHAIN, {"prepare": C, "train": C, "evaluate": C, "promote": C}, {}),
        # d waits for b and c: one branch failing is enough; e is unrelated
        (
            DIAMOND,
            {"a": C, "b": C, "c": RunState.TIMEOUT, "d": Q, "e": Q},
            {"d": "waits for c, which TIMEOUT"},
        ),
        # both branches ended badly: the first in topological order is named
        (
            DIAMOND,
            {"a": C, "b": RunState.OUT_OF_MEMORY, "c": F, "d": Q, "e": Q},
            {"d": "waits for b, which OUT_OF_MEMORY"},
        ),
        # a step that is not waiting any more (the user ran it) is no longer the graph's
        (DIAMOND, {"a": F, "b": R, "c": Q, "d": Q, "e": Q}, None),
    ],
)
def test_doomed(graph: Graph, states: dict[str, RunState], expected: dict[str, str] | None) -> None:
    found = doomed(graph, states)
    if expected is None:  # every waiting descendant of the one bad ending, whatever the reason
        bad = next(s for s, state in states.items() if state in {F, U})
        waiting = {s for s in graph if states[s] in {Q, H} and bad in ancestors(graph, s)}
        assert set(found) == waiting
        assert all(f", which {states[bad]}" in reason for reason in found.values())
    else:
        assert found == expected


@pytest.mark.parametrize(
    ("graph", "step", "expected"),
    [
        (CHAIN, "prepare", ["train", "evaluate", "promote"]),
        (CHAIN, "evaluate", ["promote"]),
        (CHAIN, "promote", []),
        (DIAMOND, "b", ["d"]),
        (DIAMOND, "a", ["b", "c", "d"]),
        (DIAMOND, "e", []),
    ],
)
def test_downstream(graph: Graph, step: str, expected: list[str]) -> None:
    assert downstream(graph, step) == expected


# ─── over random DAGs ───────────────────────────────────────────────────────────────────────────


def random_dag(rng: random.Random, n: int) -> dict[str, tuple[str, ...]]:
    """n steps, each waiting for a few earlier ones, written in a shuffled order (so the file's
    order is not a topological one)."""
    names = [f"s{i}" for i in range(n)]
    parents = {
        name: tuple(rng.sample(names[:i], k=min(i, rng.choice([0, 1, 1, 2, 3]))))
        for i, name in enumerate(names)
    }
    rng.shuffle(names)
    return {name: parents[name] for name in names}


def reachable(graph: Graph, start: str) -> set[str]:
    """Brute force: every step that waits for `start`, directly or not."""
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for step, parents in graph.items():
            if step not in found and any(p == start or p in found for p in parents):
                found.add(step)
                changed = True
    return found


@pytest.mark.parametrize("seed", range(60))
def test_random_dags_are_ordered_and_walked(seed: int) -> None:
    rng = random.Random(seed)
    graph = random_dag(rng, rng.randint(1, 50))
    assert find_cycle(graph) is None
    order = topological_order(graph)
    assert sorted(order) == sorted(graph)
    for step, parents in graph.items():
        assert all(order.index(p) < order.index(step) for p in parents)
        below = reachable(graph, step)
        assert set(downstream(graph, step)) == below
        assert all(step in ancestors(graph, d) for d in below)


@pytest.mark.parametrize("seed", range(60))
def test_random_runs_end_every_step_and_release_none_early(seed: int) -> None:
    """Run the graph as the daemon would: release what is ready, end what is doomed, let steps
    complete or fail at random. Nothing stays waiting, nothing starts before its parents
    COMPLETED, and every cancelled step has an ancestor that did not complete."""
    rng = random.Random(seed)
    graph = random_dag(rng, rng.randint(1, 50))
    states = dict.fromkeys(graph, Q)
    while True:
        cancel = doomed(graph, states)
        released = ready(graph, states)
        assert not set(cancel) & set(released)
        for step in cancel:
            states[step] = X
        if not released:
            break
        step = rng.choice(released)
        assert all(states[p] is C for p in graph[step])
        states[step] = F if rng.random() < 0.2 else C
    assert Q not in states.values()
    for step, state in states.items():
        bad = {a for a in ancestors(graph, step) if states[a] is not C}
        assert bool(bad) == (state is X), (step, state, bad)


@pytest.mark.parametrize("seed", range(30))
def test_random_back_edges_are_found_as_real_cycles(seed: int) -> None:
    rng = random.Random(seed)
    graph = random_dag(rng, rng.randint(2, 50))
    graph["s0"], graph["s1"] = (), ("s0",)  # at least one step with an ancestor
    parent = rng.choice([s for s in graph if ancestors(graph, s)])
    child = rng.choice(sorted(ancestors(graph, parent)))
    cyclic = {**graph, child: (*graph[child], parent)}  # the ancestor now waits for its descendant
    cycle = find_cycle(cyclic)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert all(b in cyclic[a] for a, b in pairwise(cycle))
    with pytest.raises(ValueError, match="a cycle"):
        topological_order(cyclic)
