"""Reading a spec: YAML text or a file in, a validated Spec out; and the canonical text back.

The YAML itself is read by hpcops.yamlio (size limit, UTF-8, no anchors, aliases or tags, plain
data only); this module adds what only a spec knows: that it is a mapping of fields, what a
relative path in it is relative to, and the Spec model.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpcops.describe import describe_value
from hpcops.errors import FieldProblem, SpecError
from hpcops.spec.messages import MINIMAL_SPEC, validate
from hpcops.spec.model import Spec
from hpcops.spec.sweep import check_sweep_points
from hpcops.specfile import anchor_paths
from hpcops.yamlio import (
    MAX_YAML_BYTES,
    SPEC,
    YamlProblems,
    dump_yaml,
    read_document,
    read_yaml,
)

MAX_SPEC_BYTES: int = MAX_YAML_BYTES


def _is_blank(data: bytes | str) -> bool:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return not text.removeprefix("\ufeff").strip()


def _plain_data(data: bytes | str) -> dict[str, object]:
    """The spec's YAML as plain data, every reason to refuse it raised as YamlProblems."""
    root = read_yaml(data, SPEC)
    if root is None:
        what = "empty" if _is_blank(data) else "empty (it holds only comments or null)"
        raise YamlProblems.one(f"the spec is {what}; a minimal spec is:\n{_indent(MINIMAL_SPEC)}")
    if not isinstance(root, dict):
        raise YamlProblems.one(
            f"the spec must be a YAML mapping of fields; got {describe_value(root)}. "
            f"A minimal spec is:\n{_indent(MINIMAL_SPEC)}"
        )
    return root


def _indent(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.splitlines())


def _parse(data: bytes | str, source: str, base_dir: Path | None) -> Spec:
    try:
        plain = _plain_data(data)
    except YamlProblems as exc:
        raise SpecError(source, exc.problems) from None
    if base_dir is not None:
        anchor_paths(plain, base_dir)
    spec = validate(plain, source)
    check_sweep_points(spec, source)
    return spec


def parse_spec(data: bytes | str, source: str, *, base_dir: Path | None = None) -> Spec:
    """A validated Spec from YAML text or bytes; `source` names it in messages (a path, "-").

    Raises SpecError, and nothing else, for any input. A relative workdir is refused unless
    `base_dir` says what it is relative to (the spec file's folder, as load_spec_file has it).
    A sweep's every point is checked too (check_sweep_points).
    """
    try:
        return _parse(data, source, base_dir)
    except SpecError:
        raise
    except Exception as exc:  # a bug of ours must still come out as the promised error
        raise SpecError(source, [FieldProblem("", f"could not be read: {exc!r}")]) from exc


def load_spec_file(path: str | Path) -> Spec:
    """Read and validate a spec file.

    A relative workdir is resolved against the spec file's folder, and a spec without one runs
    there. Reads at most MAX_SPEC_BYTES + 1 bytes, so a huge file costs no memory.
    """
    source = os.fspath(path)
    data = read_document(path, SPEC, "spec file")
    base_dir = Path(path).absolute().parent
    try:
        return _parse(data, source, base_dir)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(source, [FieldProblem("", f"could not be read: {exc!r}")]) from exc


def spec_to_yaml(spec: Spec) -> str:
    """The spec as canonical YAML, every field written out, that parse_spec reads back equal."""
    data = spec.model_dump(mode="python")
    # schedule, sweep, retry and checkpoint are absent unless given, so a spec without them
    # keeps its canonical text and hash from before they existed.
    for name in ("schedule", "retry", "checkpoint"):
        if data.get(name) is None:
            data.pop(name, None)
    data.pop("sweep", None)
    if spec.sweep is not None:
        data["sweep"] = spec.sweep.plain()
    return dump_yaml(data)
