"""`hpcops render` prints the script the daemon would submit: one JobContext builder for both."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from hpcops.cli.main import cli
from hpcops.config import parse_config
from hpcops.jobcontext import Placement, build_job_context
from hpcops.render import render_script
from hpcops.spec import load_spec_file

COMMIT = "a" * 40


def _write(home: Path, spec_text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text("lab: testlab\n")
    spec = home / "spec.yaml"
    spec.write_text(spec_text)
    return spec


def test_render_of_a_spec_with_code_checks_the_commit_out(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = _write(
        home,
        "name: coded\nexperiment: e\ncommand: python train.py\n"
        f"code: {{repo: https://example.org/lab/proj.git, commit: {COMMIT}}}\n",
    )
    result = CliRunner().invoke(cli, ["--home", str(home), "render", str(spec)])
    assert result.exit_code == 0, result.output
    script = result.output
    # The checkout step the daemon's script has: the commit, from the mirror's objects.
    assert f"checkout --quiet --detach {COMMIT}" in script
    assert str(home / "code" / "mirror.git" / "objects") in script


def test_render_prints_exactly_what_the_daemon_builds(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec_path = _write(
        home,
        "name: coded\nexperiment: e\ncommand: python train.py\n"
        f"code: {{repo: https://example.org/lab/proj.git, commit: {COMMIT}}}\n",
    )
    config = parse_config("lab: testlab\n", "config.yaml")
    spec = load_spec_file(spec_path)
    daemon_side = render_script(
        spec,
        build_job_context(spec, config, Placement.of(config, home), 0, "0" * 16),
        config.template_dirs,
    )
    result = CliRunner().invoke(cli, ["--home", str(home), "render", str(spec_path)])
    assert result.exit_code == 0, result.output
    assert result.output == daemon_side


SWEEP = (
    "name: lr\nexperiment: e\ncommand: python train.py\n"
    "sweep: {grid: {lr: [0.1, 0.01], resources.mem: [1G, 2G]}}\n"
)


def test_render_of_a_sweep_prints_its_arrays_script(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = _write(home, SWEEP)
    result = CliRunner().invoke(cli, ["--home", str(home), "render", str(spec)])
    assert result.exit_code == 0, result.output
    # The first array: the points sharing point 0's resources (mem 1G: points 0 and 2).
    assert "#SBATCH --mem=1024M" in result.output
    assert [line for line in result.output.splitlines() if line.endswith(")")] == ["0)", "2)"]
    assert 'exec /bin/bash -- "$hpcops_script"' in result.output


def test_render_of_one_point_prints_the_script_its_task_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = _write(home, SWEEP)
    result = CliRunner().invoke(cli, ["--home", str(home), "render", str(spec), "--point", "3"])
    assert result.exit_code == 0, result.output
    assert "export HPCOPS_PARAM_LR=0.01" in result.output
    assert "#SBATCH --mem=2048M" in result.output
    beyond = CliRunner().invoke(cli, ["--home", str(home), "render", str(spec), "--point", "4"])
    assert beyond.exit_code == 2 and "the sweep has points 0 to 3" in beyond.output
    plain = _write(tmp_path / "plain", "name: one\nexperiment: e\ncommand: 'true'\n")
    refused = CliRunner().invoke(
        cli, ["--home", str(tmp_path / "plain"), "render", str(plain), "--point", "0"]
    )
    assert refused.exit_code == 2 and "is not a sweep" in refused.output
