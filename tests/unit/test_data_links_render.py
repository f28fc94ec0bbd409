"""Data links live in each run's own tree (issue 12, item 7).

With `code:` and an absolute workdir, the link to a data target's view was made under that
workdir: one folder shared by every run of the spec, which each run repointed, so a running job
could read another run's data version while its record named its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpcops.config import Config
from hpcops.jobcontext import Placement, build_job_context
from hpcops.render import JobContext, data_dest, render_script
from hpcops.spec import Spec, parse_spec

RUN_ROOT = Path("/scratch/lab/runs")
CODE_SPEC = """\
name: mnist
experiment: mnist
command: python train.py
code: {repo: /home/ana/mnist, commit: 0123456789abcdef0123456789abcdef01234567}
data:
  - {path: data/mnist}
  - {path: data/labels.csv, repo: 'https://git.example.edu/lab/labels.git', dest: extra/labels.csv}
"""


def _context(spec: Spec, run_id: int) -> JobContext:
    placement = Placement(RUN_ROOT, "/scratch/lab/code/objects", "/opt/lab/venv/bin/python")
    return build_job_context(spec, Config(), placement, run_id, f"{run_id:016x}", environ={})


def _links(script: str) -> list[str]:
    """The paths the script links a data view to: `ln -sfn -- VIEW LINK`."""
    return re.findall(r"ln -sfn -- \S+ (\S+) \|\| exit 1", script)


def _data_exports(script: str) -> dict[str, str]:
    return dict(re.findall(r"^export (HPCOPS_DATA_[A-Z0-9_]+)=(\S+)$", script, flags=re.M))


@pytest.mark.parametrize("workdir", ["/home/ana/mnist", "/srv/shared/mnist", None, "sub/dir"])
def test_two_runs_never_link_the_same_path(workdir: str | None) -> None:
    text = CODE_SPEC + (f"workdir: {workdir}\n" if workdir else "")
    spec = parse_spec(text, "mnist.yaml")
    scripts = [render_script(spec, _context(spec, run_id)) for run_id in (41, 42)]
    links = [_links(script) for script in scripts]
    assert all(len(found) == 2 for found in links), links
    assert not set(links[0]) & set(links[1])
    for run_id, found, script in zip((41, 42), links, scripts, strict=True):
        own = RUN_ROOT / f"run-{run_id:06d}"
        for link in found:
            assert Path(link).is_relative_to(own), link
        # The variables the job reads name the links in its own tree.
        assert sorted(_data_exports(script).values()) == sorted(found)


def test_with_an_absolute_workdir_links_go_in_the_checkout() -> None:
    spec = parse_spec(CODE_SPEC + "workdir: /home/ana/mnist\n", "mnist.yaml")
    ctx = _context(spec, 42)
    src = RUN_ROOT / "run-000042" / "src"
    assert data_dest(spec, ctx, "data/mnist") == str(src / "data" / "mnist")
    assert _data_exports(render_script(spec, ctx)) == {
        "HPCOPS_DATA_MNIST": str(src / "data" / "mnist"),
        "HPCOPS_DATA_LABELS_CSV": str(src / "extra" / "labels.csv"),
    }
    # The command still runs where the spec says.
    assert "\ncd -- /home/ana/mnist || exit 1\n" in render_script(spec, ctx)


def test_a_relative_workdir_keeps_its_links_under_it_in_the_checkout() -> None:
    spec = parse_spec(CODE_SPEC + "workdir: sub/dir\n", "mnist.yaml")
    dest = data_dest(spec, _context(spec, 42), "data/mnist")
    assert dest == str(RUN_ROOT / "run-000042" / "src" / "sub" / "dir" / "data" / "mnist")


def test_without_code_the_job_reads_the_view_itself() -> None:
    spec = parse_spec(
        "name: t\nexperiment: e\ncommand: x\nworkdir: /home/ana/x\n"
        "data: [{path: d, repo: 'https://git.example.edu/lab/d.git'}]\n",
        "t",
    )
    script = render_script(spec, _context(spec, 42))
    assert _links(script) == []
    assert _data_exports(script) == {"HPCOPS_DATA_D": str(RUN_ROOT / "run-000042" / "data" / "d")}
