"""The experiment spec: what a lab member asks hpcops to run, read from untrusted YAML.

    load.py        parse_spec, load_spec_file, spec_to_yaml: YAML (through hpcops.yamlio) in,
                   a validated Spec out, and the canonical text back
    model.py       the pydantic models: Spec, Resources, Code, DataTarget, ScheduleBlock
    fields.py      each field's check, raising the message a user sees
    directives.py  extra_directives: sbatch options nobody modelled, and what they may not set
    messages.py    pydantic's errors as FieldProblems in our words

Every problem becomes a `FieldProblem(location, message)` inside one `SpecError`; the location is
dotted (`resources.mem`, `params.lr`, `extra_directives[2]`) and the message says what is allowed,
usually with a valid example. The names below are the package's public face; import them from
`hpcops.spec`, not from its modules.
"""

from hpcops.names import FULL_COMMIT_RE
from hpcops.spec.directives import MODELLED_OPTIONS, extra_directive_problem
from hpcops.spec.fields import ParamValue, data_env_name, is_repo_url
from hpcops.spec.load import MAX_SPEC_BYTES, load_spec_file, parse_spec, spec_to_yaml
from hpcops.spec.model import Code, DataTarget, Resources, ScheduleBlock, Spec
from hpcops.units import parse_mem_mb, parse_slurm_time

__all__ = [
    "FULL_COMMIT_RE",
    "MAX_SPEC_BYTES",
    "MODELLED_OPTIONS",
    "Code",
    "DataTarget",
    "ParamValue",
    "Resources",
    "ScheduleBlock",
    "Spec",
    "data_env_name",
    "extra_directive_problem",
    "is_repo_url",
    "load_spec_file",
    "parse_mem_mb",
    "parse_slurm_time",
    "parse_spec",
    "spec_to_yaml",
]
