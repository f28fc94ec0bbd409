"""Pipelines: spec files run as steps that wait for each other, pass on their results, and
promote a model only when it is better (issue 15).

    model.py     the pydantic models (PipelineDef, Step, Register) and the checks across steps
    messages.py  pydantic's errors about a pipeline file in our words
    load.py      load_pipeline_file: a pipeline file and its steps' spec files, checked
    graph.py     pure: the order of the steps, which are ready, which can never run

A pipeline has at most MAX_PIPELINE_STEPS (50) steps, each with at most MAX_STEP_INPUTS (20)
inputs; an input is `<step>.run` or `<step>.best` of a step it waits for.

Every problem is a FieldProblem inside one SpecError, as a spec's are, located at the step and
field (`steps.train.after[0]`, `steps.evaluate.inputs.candidate`, `steps.train.spec.resources.mem`
for a problem in a step's spec file). Import these names from `hpcops.pipeline`.
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
from hpcops.pipeline.load import (
    PIPELINE,
    Pipeline,
    is_pipeline_data,
    is_pipeline_file,
    is_pipeline_text,
    load_pipeline_file,
    pipeline_from_wire,
    pipeline_to_wire,
)
from hpcops.pipeline.model import (
    MAX_PIPELINE_STEPS,
    MAX_STEP_INPUTS,
    OUTPUTS,
    PipelineDef,
    Register,
    Step,
)
from hpcops.pipeline.progress import pipeline_state, sweep_step_state

__all__ = [
    "MAX_PIPELINE_STEPS",
    "MAX_STEP_INPUTS",
    "OUTPUTS",
    "PIPELINE",
    "Graph",
    "Pipeline",
    "PipelineDef",
    "Register",
    "Step",
    "ancestors",
    "doomed",
    "downstream",
    "find_cycle",
    "is_pipeline_data",
    "is_pipeline_file",
    "is_pipeline_text",
    "load_pipeline_file",
    "pipeline_from_wire",
    "pipeline_state",
    "pipeline_to_wire",
    "ready",
    "sweep_step_state",
    "topological_order",
]
