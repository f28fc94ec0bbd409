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
