"""A pipeline's steps as a graph, and what the daemon decides from it: pure functions, no I/O.

A graph maps each step to the steps it waits for (its `after:`), in the order the pipeline file
writes the steps; that order breaks every tie, so each function answers the same way every time
for the same file (the daemon's tick, `hpcops show` and the tests agree).

The daemon holds the graph itself rather than leaving it to Slurm's `afterok`: an `afterok` on a
job Slurm has already purged is silently dropped, and a failed parent leaves its child pending
unless `--kill-on-invalid-dep` is set (issue 15). So a step is released only when `ready` says
so, and a step that can never run ends through `doomed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hpcops.states import WAITING_STATES, RunState

__all__ = [
    "Graph",
    "ancestors",
    "doomed",
    "downstream",
    "find_cycle",
    "ready",
    "topological_order",
]

Graph = Mapping[str, Sequence[str]]  # step -> the steps it waits for, in the file's order


def find_cycle(graph: Graph) -> list[str] | None:
    """The first cycle met walking the steps in the file's order, as a closed path
    (`[train, evaluate, train]`), or None. Parents the graph does not name are ignored: an
    unknown step has its own message, and one wrong name should not hide a cycle or make one."""
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        # Iterative depth-first walk: a 50-step chain must not depend on Python's recursion limit.
        path: list[str] = [start]
        on_path = {start}
        children = [iter(graph[start])]
        while children:
            child = next(children[-1], None)
            if child is None:
                children.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child in graph and child not in done:
                path.append(child)
                on_path.add(child)
                children.append(iter(graph[child]))
    return None


def topological_order(graph: Graph) -> list[str]:
    """Every step after all the steps it waits for; among steps free at the same time, the
    file's order. ValueError on a cycle (a loaded pipeline has none: load refuses it)."""
    placed: list[str] = []
    placed_set: set[str] = set()
    while len(placed) < len(graph):
        # Quadratic in the steps, at most MAX_PIPELINE_STEPS (50): simpler than a heap, and
        # it keeps the file's order among ready steps without a tie-break key.
        free = next(
            (
                s
                for s in graph
                if s not in placed_set and all(p in placed_set for p in graph[s] if p in graph)
            ),
            None,
        )
        if free is None:
            raise ValueError(f"a cycle: {' -> '.join(find_cycle(graph) or [])}")
        placed.append(free)
        placed_set.add(free)
    return placed


def ancestors(graph: Graph, step: str) -> set[str]:
    """Every step `step` waits for, directly or through others (not itself)."""
    seen: set[str] = set()
    todo = list(graph.get(step, ()))
    while todo:
        parent = todo.pop()
        if parent not in seen and parent in graph:
            seen.add(parent)
            todo.extend(graph[parent])
    seen.discard(step)
    return seen


def downstream(graph: Graph, step: str) -> list[str]:
    """The steps that wait for `step`, directly or through others, in topological order, `step`
    itself not included: what `hpcops rerun STEP --downstream` runs again after it."""
    return [s for s in topological_order(graph) if step in ancestors(graph, s)]


def ready(graph: Graph, states: Mapping[str, RunState]) -> list[str]:
    """The waiting steps (QUEUED or HELD) whose every parent COMPLETED, in topological order.

    A held step is listed too: the hold is the user's and the engine honours it as for any run;
    the graph only says the step's parents no longer hold it back. The engine remembers which
    steps it has released already (a released step is QUEUED until it is claimed), so a step
    listed twice is released once. A step missing from `states` counts as not COMPLETED.
    """
    return [
        step
        for step in topological_order(graph)
        if states.get(step) in WAITING_STATES
        and all(states.get(parent) is RunState.COMPLETED for parent in graph[step])
    ]


def doomed(graph: Graph, states: Mapping[str, RunState]) -> dict[str, str]:
    """The waiting steps that can never run, each with its reason: an ancestor ended in a state
    other than COMPLETED. The reason names the first such ancestor in topological order, and the
    parent it is waited for through when that is another step: "waits for train, which FAILED",
    "waits for train (through evaluate), which FAILED". In topological order."""
    order = topological_order(graph)
    position = {step: i for i, step in enumerate(order)}
    found: dict[str, str] = {}
    for step in order:
        if states.get(step) not in WAITING_STATES:
            continue
        failed = [a for a in ancestors(graph, step) if _ended_otherwise(states.get(a))]
        if not failed:
            continue
        first = min(failed, key=position.__getitem__)
        ending = states[first]
        if first in graph[step]:
            found[step] = f"waits for {first}, which {ending}"
        else:
            through = next(p for p in graph[step] if first in ancestors(graph, p))
            found[step] = f"waits for {first} (through {through}), which {ending}"
    return found


def _ended_otherwise(state: RunState | None) -> bool:
    """An ending after which the step's children can never run: any terminal state but
    COMPLETED (UNKNOWN included: nobody can say the step's outputs exist)."""
    return state is not None and state.is_terminal and state is not RunState.COMPLETED
