"""Pipelines: spec files run as steps that wait for each other (issue 15). graph.py, pure:
the order of the steps, which are ready, which can never run.
"""

from hpcops.pipeline.graph import (
    Graph,
    ancestors,
    doomed,
    downstream,
    find_cycle,
    ready,
    topological_order,
)

__all__ = [
    "Graph",
    "ancestors",
    "doomed",
    "downstream",
    "find_cycle",
    "ready",
    "topological_order",
]
