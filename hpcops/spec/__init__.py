"""The experiment spec: what a lab member asks hpcops to run, read from untrusted YAML.

    load.py        parse_spec, load_spec_file, spec_to_yaml: YAML (through hpcops.yamlio) in,
                   a validated Spec out, and the canonical text back
    model.py       the Spec model: one experiment, its checks across fields
    blocks.py      the blocks a spec is made of: Resources, Code, DataTarget, ScheduleBlock,
                   RetryPolicy, Checkpoint
    sweepdef.py    a sweep's block: SweepDef, RandomSweep, Distribution, SweepObjective
    sweep.py       a sweep's points and each point's own spec (pure)
    fields.py      each field's check, raising the message a user sees
    directives.py  extra_directives: sbatch options nobody modelled, and what they may not set
    messages.py    pydantic's errors as FieldProblems in our words

Every problem becomes a `FieldProblem(location, message)` inside one `SpecError`; the location is
dotted (`resources.mem`, `params.lr`, `extra_directives[2]`) and the message says what is allowed,
usually with a valid example. The names below are the package's public face; import them from
`hpcops.spec`, not from its modules.
"""

from hpcops.names import FULL_COMMIT_RE
from hpcops.spec.blocks import Checkpoint, Code, DataTarget, Resources, RetryPolicy, ScheduleBlock
from hpcops.spec.directives import MODELLED_OPTIONS, extra_directive_problem, sets_signal
from hpcops.spec.fields import (
    MAX_ATTEMPTS,
    MAX_SWEEP_POINTS,
    RETRY_STATES,
    ParamValue,
    data_env_name,
)
from hpcops.spec.load import MAX_SPEC_BYTES, load_spec_file, parse_spec, spec_to_yaml
from hpcops.spec.model import Spec
from hpcops.spec.sweep import (
    Point,
    check_sweep_points,
    pin_sweep_seed,
    point_spec,
    point_specs,
    sweep_points,
)
from hpcops.spec.sweepdef import Distribution, RandomSweep, SweepDef, SweepKind, SweepObjective
from hpcops.specfile import is_repo_url
from hpcops.units import parse_mem_mb, parse_slurm_time

__all__ = [
    "FULL_COMMIT_RE",
    "MAX_ATTEMPTS",
    "MAX_SPEC_BYTES",
    "MAX_SWEEP_POINTS",
    "MODELLED_OPTIONS",
    "RETRY_STATES",
    "Checkpoint",
    "Code",
    "DataTarget",
    "Distribution",
    "ParamValue",
    "Point",
    "RandomSweep",
    "Resources",
    "RetryPolicy",
    "ScheduleBlock",
    "Spec",
    "SweepDef",
    "SweepKind",
    "SweepObjective",
    "check_sweep_points",
    "data_env_name",
    "extra_directive_problem",
    "is_repo_url",
    "load_spec_file",
    "parse_mem_mb",
    "parse_slurm_time",
    "parse_spec",
    "pin_sweep_seed",
    "point_spec",
    "point_specs",
    "sets_signal",
    "spec_to_yaml",
    "sweep_points",
]
