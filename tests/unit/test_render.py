"""Rendering sbatch scripts: golden files, directive checks, and the script run by bash.

The golden scripts in golden/ are compared byte for byte; a mismatch prints a unified diff.
Regenerate them only on purpose: HPCOPS_REGEN_GOLDEN=1 pytest tests/unit/test_render.py
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcops.errors import ConfigError, FieldProblem, SpecError
from hpcops.render import (
    BUILTIN_TEMPLATE_DIR,
    DIRECTIVE_VALUE_RE,
    JobContext,
    job_name,
    render_script,
    sbatch_directives,
)
from hpcops.rundir import ExitMarker, RunDir, parse_exit_marker, parse_start_marker
from hpcops.spec import Resources, Spec, parse_spec
from hpcops.transport.local import LocalTransport

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_NAMES = sorted(p.stem for p in GOLDEN_DIR.glob("*.yaml"))
MINIMAL_YAML = "name: mnist-baseline\nexperiment: mnist\ncommand: python train.py\n"
ContextFactory = Callable[..., JobContext]


def _exit_marker(run_dir: RunDir) -> ExitMarker | None:
    """The exit marker as the daemon reads it (through its transport)."""
    text = LocalTransport().read_small_files([run_dir.exit_marker]).get(run_dir.exit_marker)
    return parse_exit_marker(text) if text is not None else None


def load_example(name: str) -> Spec:
    return parse_spec((GOLDEN_DIR / f"{name}.yaml").read_bytes(), f"{name}.yaml")


# ─── golden files ──────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_rendered_script_matches_golden_file(name: str, golden_context: JobContext) -> None:
    script = render_script(load_example(name), golden_context)
    golden = GOLDEN_DIR / f"{name}.sh"
    if os.environ.get("HPCOPS_REGEN_GOLDEN") == "1":
        golden.write_text(script, encoding="utf-8")
    if not golden.exists():
        pytest.fail(
            f"{golden} is missing; create it with HPCOPS_REGEN_GOLDEN=1 and review it",
            pytrace=False,
        )
    expected = golden.read_text(encoding="utf-8")
    if script != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            script.splitlines(keepends=True),
            fromfile=f"{golden} (expected)",
            tofile="rendered",
        )
        pytest.fail(
            "the rendered script differs from its golden file; if the change is intended, "
            "regenerate with HPCOPS_REGEN_GOLDEN=1 and review the diff:\n" + "".join(diff),
            pytrace=False,
        )


def test_every_example_has_a_golden_script() -> None:
    assert {"minimal", "gpu", "nasty"} <= set(GOLDEN_NAMES)
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.sh")) == GOLDEN_NAMES


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_script_is_valid_bash(name: str) -> None:
    result = subprocess.run(
        ["bash", "-n", str(GOLDEN_DIR / f"{name}.sh")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# ─── directives ────────────────────────────────────────────────────────────────────────────────


def test_directives_of_a_gpu_spec_in_order(golden_context: JobContext) -> None:
    assert sbatch_directives(load_example("gpu"), golden_context) == [
        ("job-name", "resnet50-imagenet"),
        ("comment", "hpcops:0123456789abcdef"),
        ("output", "/scratch/vision-lab/hpcops/runs/r-000042/stdout.log"),
        ("error", "/scratch/vision-lab/hpcops/runs/r-000042/stderr.log"),
        ("export", "NONE"),
        ("account", "vision-lab"),
        ("partition", "gpu,gpu-long"),
        ("nodes", "2"),
        ("ntasks", "8"),
        ("cpus-per-task", "8"),
        ("mem", "262144M"),
        ("gres", "gpu:a100:4"),
        ("time", "2880"),
        ("qos", "deadline"),
        ("constraint", "ib"),
        ("requeue", None),
        ("signal", "B:USR1@300"),
        ("mail-type", "END,FAIL"),
    ]


def test_directives_leave_out_what_nobody_set(tmp_path: Path, make_context: ContextFactory) -> None:
    ctx = make_context(tmp_path, account=None, default_partition=None)
    options = [o for o, _ in sbatch_directives(parse_spec(MINIMAL_YAML, "t"), ctx)]
    assert options == [
        "job-name", "comment", "output", "error", "export", "nodes", "ntasks", "cpus-per-task",
        "time",
    ]  # fmt: skip


def test_default_partition_only_when_the_spec_names_none(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    ctx = make_context(tmp_path, default_partition="cpu")
    plain = dict(sbatch_directives(parse_spec(MINIMAL_YAML, "t"), ctx))
    assert plain["partition"] == "cpu"
    gpu = parse_spec(MINIMAL_YAML + "resources: {partition: gpu}\n", "t")
    assert dict(sbatch_directives(gpu, ctx))["partition"] == "gpu"


def test_gres_without_a_gpu_type_and_time_in_whole_minutes(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    spec = parse_spec(MINIMAL_YAML + "resources: {gpus: 2, time: '00:01:30'}\n", "t")
    directives = dict(sbatch_directives(spec, make_context(tmp_path)))
    assert directives["gres"] == "gpu:2"
    assert directives["time"] == "2"  # 90 s round up: Slurm counts minutes


def test_job_name_is_the_spec_name(golden_context: JobContext) -> None:
    assert job_name(load_example("minimal"), golden_context) == "mnist-baseline"


def _first_problem(render: Callable[..., object], *args: object) -> FieldProblem:
    """The first problem of the SpecError that render(*args) refuses the spec with."""
    with pytest.raises(SpecError) as info:
        render(*args)
    return info.value.problems[0]


def test_an_unvalidated_spec_value_is_still_caught(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    # model_construct skips validation, as a careless caller might; the directive check must
    # still refuse a value that would add an #SBATCH line of its own.
    sneaky = Resources.model_construct(
        partition="gpu\n#SBATCH --account=other", nodes=1, ntasks=1, cpus_per_task=1,
        mem=None, gpus=0, gpu_type=None, time="60", qos=None,
    )  # fmt: skip
    spec = parse_spec(MINIMAL_YAML, "t").model_copy(update={"resources": sneaky})
    refusal = _first_problem(sbatch_directives, spec, make_context(tmp_path))
    assert refusal.location == "resources.partition"


def test_an_unvalidated_extra_directive_is_still_caught(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    spec = parse_spec(MINIMAL_YAML, "t").model_copy(
        update={"extra_directives": ["--constraint=ib\n#SBATCH --qos=high"]}
    )
    refusal = _first_problem(render_script, spec, make_context(tmp_path))
    assert refusal.location == "extra_directives[0]"


@pytest.mark.parametrize(
    "run_dir", ["/scratch/my lab/runs/r-1", "/scratch/lab%j/r-1", "/scratch/l'ab/r-1", "runs/r-1"]
)
def test_a_run_dir_sbatch_cannot_take_names_run_root(
    run_dir: str, make_context: ContextFactory
) -> None:
    spec = parse_spec(MINIMAL_YAML, "t")
    with pytest.raises(ConfigError, match="run_root"):
        sbatch_directives(spec, make_context(Path(run_dir)))


@pytest.mark.parametrize("field", ["account", "default_partition"])
def test_a_bad_config_value_names_the_setting(
    field: str, tmp_path: Path, make_context: ContextFactory
) -> None:
    spec = parse_spec(MINIMAL_YAML, "t")
    ctx = make_context(tmp_path, **{field: "lab\n#SBATCH --qos=high"})
    with pytest.raises(ConfigError, match=field):
        sbatch_directives(spec, ctx)


@pytest.mark.parametrize(
    ("field", "value"),
    [("run_id", "R 1"), ("token", "not-hex"), ("lab", "a lab"), ("token", "abc")],
)
def test_job_context_refuses_values_the_daemon_should_never_make(
    field: str, value: str, tmp_path: Path, make_context: ContextFactory
) -> None:
    with pytest.raises(ValueError, match=field):
        make_context(tmp_path, **{field: value})


@pytest.mark.parametrize("attempt", [0, -1, True, "2", 1.0])
def test_job_context_refuses_an_attempt_that_is_not_a_count(
    attempt: object, tmp_path: Path, make_context: ContextFactory
) -> None:
    with pytest.raises(ValueError, match="attempt"):
        make_context(tmp_path, attempt=attempt)


# ─── checkpoint: the signal directive ──────────────────────────────────────────────────────────

CHECKPOINT_YAML = MINIMAL_YAML + "resources: {time: '00:10:00'}\ncheckpoint: {before_s: 300}\n"


def test_checkpoint_adds_the_signal_directive_after_the_time(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    ctx = make_context(tmp_path)
    directives = sbatch_directives(parse_spec(CHECKPOINT_YAML, "t"), ctx)
    options = [o for o, _ in directives]
    assert options[options.index("time") + 1] == "signal"
    assert dict(directives)["signal"] == "B:USR1@300"
    usr2 = CHECKPOINT_YAML.replace("{before_s: 300}", "{signal: USR2, before_s: 45}")
    assert dict(sbatch_directives(parse_spec(usr2, "t"), ctx))["signal"] == "B:USR2@45"
    assert "signal" not in dict(sbatch_directives(parse_spec(MINIMAL_YAML, "t"), ctx))


@pytest.mark.parametrize(
    ("value", "ok"),
    [("B:USR1@300", True), ("B:USR2@10", True), ("B:USR1@65535", True), ("USR1@300", False),
     ("B:USR1", False), ("B:TERM@300", False), ("R:USR1@300", False), ("B:USR1@5", False),
     ("B:USR1@030", False), ("B:USR1@300\n", False), ("B:USR1@300 ", False),
     ("B:USR1@300\n#SBATCH --qos=high", False), ("B:10@300", False), ("B:USR1@65536", False),
     ("B:USR1@99999", False), ("B:USR1@59999", True), ("B:USR1@9999", True)],
)  # fmt: skip
def test_the_signal_directive_value_is_strict(value: str, ok: bool) -> None:
    assert bool(DIRECTIVE_VALUE_RE["signal"].fullmatch(value)) is ok


def test_an_unvalidated_checkpoint_is_still_caught(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    spec = parse_spec(CHECKPOINT_YAML, "t")
    assert spec.checkpoint is not None
    sneaky = spec.checkpoint.model_construct(signal="USR1@1 --qos=high", before_s=300)
    unchecked = spec.model_copy(update={"checkpoint": sneaky})
    refusal = _first_problem(sbatch_directives, unchecked, make_context(tmp_path))
    assert refusal.location == "checkpoint"
    # and a --signal that skipped validation next to a checkpoint
    both = spec.model_copy(update={"extra_directives": ["--signal=B:USR2@60"]})
    refusal = _first_problem(sbatch_directives, both, make_context(tmp_path))
    assert refusal.location == "extra_directives[0]"


def test_a_lab_template_cannot_set_a_signal_of_its_own_next_to_checkpoint(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    (tmp_path / "lab.sh.j2").write_text(
        HEADER.replace("#!/bin/bash\n", "#!/bin/bash\n#SBATCH --signal=B:USR2@60\n")
    )
    spec = parse_spec(CHECKPOINT_YAML + "template: lab\n", "t")
    with pytest.raises(ConfigError, match="sets --signal, which hpcops controls"):
        render_script(spec, make_context(tmp_path / "run"), [tmp_path])
    # without checkpoint:, the lab's fixed signal is the lab's business
    plain = parse_spec(MINIMAL_YAML + "template: lab\n", "t")
    assert "#SBATCH --signal=B:USR2@60\n" in render_script(
        plain, make_context(tmp_path), [tmp_path]
    )


# ─── templates ─────────────────────────────────────────────────────────────────────────────────


def test_builtin_template_dir_holds_the_default_template() -> None:
    assert (BUILTIN_TEMPLATE_DIR / "default.sh.j2").is_file()


def test_unknown_template_names_the_ones_that_exist(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    (tmp_path / "gpu-cluster.sh.j2").write_text("#!/bin/bash\n")
    spec = parse_spec(MINIMAL_YAML + "template: nope\n", "t")
    problem = _first_problem(render_script, spec, make_context(tmp_path / "run"), [tmp_path])
    assert problem.location == "template"
    assert "'nope'" in problem.message
    assert "default, gpu-cluster" in problem.message


def _lab_template(tmp_path: Path, name: str, text: str) -> Path:
    lab_dir = tmp_path / "lab_templates"
    lab_dir.mkdir(exist_ok=True)
    (lab_dir / f"{name}.sh.j2").write_text(text)
    return lab_dir


def test_a_lab_template_extends_one_slot_of_the_default(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    lab_dir = _lab_template(
        tmp_path,
        "cuda",
        '{% extends "default.sh.j2" %}\n'
        "{% block prologue %}{{ super() }}module load cuda/12.2\n{% endblock %}\n",
    )
    spec = parse_spec(MINIMAL_YAML + "template: cuda\n", "t")
    script = render_script(spec, make_context(tmp_path / "run"), [lab_dir])
    assert "module load cuda/12.2\n" in script
    assert script.index("module load") < script.index("# --- command ---")


def test_a_lab_template_dir_comes_before_the_builtin(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    default = (BUILTIN_TEMPLATE_DIR / "default.sh.j2").read_text()
    lab_dir = _lab_template(tmp_path, "default", default.replace("set -u\n", "set -u  # lab\n"))
    script = render_script(parse_spec(MINIMAL_YAML, "t"), make_context(tmp_path / "r"), [lab_dir])
    assert "set -u  # lab\n" in script


HEADER = "#!/bin/bash\n{% for d in directives %}#SBATCH {{ d }}\n{% endfor %}{{ command }}\n"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        (HEADER.replace("#!/bin/bash\n", "#!/bin/bash\n#SBATCH --partition=bigmem\n"),
         "--partition, which hpcops controls"),
        (HEADER.replace("#!/bin/bash\n", "#!/bin/bash\n#SBATCH --constraint=a b\n"),
         "not a well-formed #SBATCH line"),
        (HEADER.replace("#!/bin/bash\n", "#!/bin/bash\n#PBS -l walltime=1:00:00\n"),
         "#PBS line"),
        (HEADER.replace("#SBATCH {{ d }}\n", "{% if 'comment' not in d %}#SBATCH {{ d }}\n"
                        "{% endif %}"),
         "appears 0 times"),
        ("#!/bin/bash\necho start\n{% for d in directives %}#SBATCH {{ d }}\n{% endfor %}",
         "appears 0 times"),
        ("{% for d in directives %}#SBATCH {{ d }}\n{% endfor %}{{ nope }}", "nope"),
        ("{% for d in directives %}#SBATCH {{ d }}\n{% endfor %}{% if %}", "lab.sh.j2, line 2"),
        ("{{ spec.__class__.__mro__ }}", "failed to render"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ spec.params | shquote }}", "shquote takes a string or a number"),
        ('{% extends "nowhere.sh.j2" %}', "nowhere.sh.j2"),
    ],
)  # fmt: skip
def test_a_broken_lab_template_is_a_config_error(
    text: str, phrase: str, tmp_path: Path, make_context: ContextFactory
) -> None:
    lab_dir = _lab_template(tmp_path, "lab", text)
    spec = parse_spec(MINIMAL_YAML + "template: lab\n", "t")
    with pytest.raises(ConfigError, match=re.escape(phrase)):
        render_script(spec, make_context(tmp_path / "run"), [lab_dir])


def test_a_fixed_well_formed_directive_in_a_lab_template_is_allowed(
    tmp_path: Path, make_context: ContextFactory
) -> None:
    text = HEADER.replace("#!/bin/bash\n", "#!/bin/bash\n#SBATCH --constraint=ib\n")
    lab_dir = _lab_template(tmp_path, "lab", text)
    spec = parse_spec(MINIMAL_YAML + "template: lab\n", "t")
    assert "#SBATCH --constraint=ib\n" in render_script(spec, make_context(tmp_path), [lab_dir])


def test_the_command_cannot_end_its_here_document_early(golden_context: JobContext) -> None:
    # nasty.yaml's command holds a line equal to the delimiter hpcops would pick first.
    script = render_script(load_example("nasty"), golden_context)
    assert "<<'HPCOPS_COMMAND_0123456789abcdef_'\n" in script


# ─── the script, run by bash ───────────────────────────────────────────────────────────────────


class Job:
    """A rendered script run by bash as Slurm would start it, without Slurm.

    stdout and stderr go to the run directory's logs, as #SBATCH --output/--error send them, so a
    process the command leaves behind cannot hold a pipe open.
    """

    def __init__(self, tmp_path: Path, spec: Spec, make_context: ContextFactory) -> None:
        self.run_dir = RunDir(tmp_path / "run")
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        self.run_dir.script.write_text(render_script(spec, make_context(self.run_dir.path)))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCOPS_", "SLURM_"))}
        env["SLURM_JOB_ID"] = "1"
        with self.run_dir.stdout.open("wb") as out, self.run_dir.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                ["bash", str(self.run_dir.script)],
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a process group of its own, like a job's processes
            )

    def finish(self, timeout_s: float = 20) -> tuple[int, str, str]:
        status = self.process.wait(timeout=timeout_s)
        return status, self.run_dir.stdout.read_text(), self.run_dir.stderr.read_text()

    def wait_for(self, path: Path, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            assert self.process.poll() is None, self.finish()
            assert time.monotonic() < deadline, f"{path} did not appear"
            time.sleep(0.01)

    def kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


StartJob = Callable[..., Job]


@pytest.fixture
def start_job(tmp_path: Path, make_context: ContextFactory) -> Iterator[StartJob]:
    """start_job(spec, **context_overrides): the spec's script, running in tmp_path/run."""
    jobs: list[Job] = []

    def start(spec: Spec, **overrides: object) -> Job:
        jobs.append(Job(tmp_path, spec, functools.partial(make_context, **overrides)))
        return jobs[-1]

    yield start
    for job in jobs:  # no process of a test's job outlives the test
        job.kill_all()


def spec_with(command: str, **fields: object) -> Spec:
    data: dict[str, object] = {"name": "t", "experiment": "e", "command": command}
    data.update(fields)
    return Spec.model_validate(data)


def test_nasty_values_reach_the_job_byte_for_byte(tmp_path: Path, start_job: StartJob) -> None:
    workdir = tmp_path / 'it\'s a "quoted" dir' / "$(touch pwned-workdir)"
    workdir.mkdir(parents=True)
    nasty = load_example("nasty")
    spec = Spec.model_validate({**nasty.model_dump(), "workdir": str(workdir)})
    job = start_job(spec)
    status, out, err = job.finish()
    assert status == 0, err

    environ = {}
    for entry in (job.run_dir.path / "env.bin").read_bytes().split(b"\0")[:-1]:
        name, _, value = entry.partition(b"=")
        environ[name.decode()] = value
    expected = {f"HPCOPS_PARAM_{k.upper()}": v for k, v in nasty.params.items()}
    expected.update(nasty.env)
    expected["HPCOPS_EXPERIMENT"] = nasty.experiment
    expected["HPCOPS_RUN_ID"] = "r-000042"
    expected["HPCOPS_RUN_DIR"] = str(job.run_dir.path)
    as_text = {True: "true", False: "false"}
    for name, value in expected.items():
        text = as_text[value] if isinstance(value, bool) else str(value)
        assert environ.get(name) == text.encode(), name
    assert environ["HPCOPS_PARAM_EXPONENT"] == b"1e-05"
    assert environ["NASTY_NUMBER"] == b"8"

    assert (job.run_dir.path / "pwd.bin").read_bytes() == str(workdir).encode() + b"\0"
    pwned = [p.name for p in tmp_path.rglob("pwned*")]
    assert pwned == [], "a payload ran"
    assert not Path("/nonexistent-hpcops-canary").exists()
    # the command's own quoting survived, and the here-document did not end early
    assert out.splitlines() == [
        'it\'s "quoted", $escaped, a backslash \\ and a tab:\tend',
        "the user's own here-document, ended by the delimiter hpcops would have picked: $NOT `run`",
        "{{ jinja }} {% raw %} stays as written",
    ]


def test_markers_have_the_formats_the_daemon_reads(tmp_path: Path, start_job: StartJob) -> None:
    before = time.time()
    job = start_job(spec_with("true"))
    assert job.finish()[0] == 0
    start_text = job.run_dir.started_marker.read_text()
    exit_text = job.run_dir.exit_marker.read_text()
    assert re.fullmatch(r"[0-9]+ \S+ 1\n", start_text), start_text
    assert re.fullmatch(r"0 [0-9]+\n", exit_text), exit_text
    started = parse_start_marker(start_text)
    ended = parse_exit_marker(exit_text)
    assert started is not None and ended is not None
    assert started.slurm_job_id == "1"
    assert started.hostname == os.uname().nodename
    assert before - 1 <= started.started_at <= ended.ended_at <= time.time() + 1
    assert not list(job.run_dir.path.glob("*.tmp.*")), "a temporary marker was left behind"


@pytest.mark.parametrize(
    ("command", "status"),
    [
        ("echo failing; exit 3", 3),
        ("exit 0\necho never", 0),
        ('echo "unterminated', 2),  # a syntax error is the command's, not the script's
        ("set -e; false; echo never", 1),
        ("kill -9 $$", 137),
        ("echo $UNSET_VARIABLE_IS_FINE", 0),  # the script's `set -u` does not leak
    ],
)
def test_the_command_exit_status_lands_in_the_exit_marker(
    command: str, status: int, start_job: StartJob
) -> None:
    job = start_job(spec_with(command))
    assert job.finish()[0] == status
    marker = _exit_marker(job.run_dir)
    assert marker is not None and marker.exit_code == status


def test_a_missing_workdir_fails_the_job_with_a_marker(tmp_path: Path, start_job: StartJob) -> None:
    job = start_job(spec_with("echo never", workdir=str(tmp_path / "gone")))
    status, out, err = job.finish()
    assert status == 1 and out == ""
    assert "gone" in err
    marker = _exit_marker(job.run_dir)
    assert marker is not None and marker.exit_code == 1


def test_term_to_the_script_is_forwarded_and_exits_143(start_job: StartJob) -> None:
    command = (
        "trap 'echo \"child got TERM\"; exit 9' TERM\n"
        'touch "$HPCOPS_RUN_DIR/ready"\n'
        "sleep 60 & wait\n"
    )
    job = start_job(spec_with(command))
    job.wait_for(job.run_dir.path / "ready")
    job.process.send_signal(signal.SIGTERM)  # as `scancel --batch` would, to the script only
    status, out, _ = job.finish()
    assert status == 143
    assert "child got TERM" in out
    marker = _exit_marker(job.run_dir)
    assert marker is not None and marker.exit_code == 143


def test_term_to_every_process_of_the_job_exits_143(start_job: StartJob) -> None:
    job = start_job(spec_with('touch "$HPCOPS_RUN_DIR/ready"; sleep 60'))
    job.wait_for(job.run_dir.path / "ready")
    os.killpg(job.process.pid, signal.SIGTERM)  # as Slurm does at the time limit
    assert job.finish()[0] == 143
    marker = _exit_marker(job.run_dir)
    assert marker is not None and marker.exit_code == 143


def test_usr1_is_forwarded_and_the_job_goes_on(start_job: StartJob) -> None:
    command = (
        "trap 'touch \"$HPCOPS_RUN_DIR/warned\"' USR1\n"
        'touch "$HPCOPS_RUN_DIR/ready"\n'
        'while [ ! -e "$HPCOPS_RUN_DIR/warned" ]; do sleep 0.05; done\n'
        "exit 5\n"
    )
    job = start_job(spec_with(command))
    job.wait_for(job.run_dir.path / "ready")
    job.process.send_signal(signal.SIGUSR1)  # --signal=B:USR1@60 signals the script only
    assert job.finish()[0] == 5
    marker = _exit_marker(job.run_dir)
    assert marker is not None and marker.exit_code == 5


def test_a_requeued_job_clears_the_exit_marker_of_the_attempt_before(start_job: StartJob) -> None:
    spec = spec_with('test ! -e "$HPCOPS_RUN_DIR/hpcops.exit"')
    job = start_job(spec)
    job.finish()
    job.run_dir.exit_marker.write_text("143 1\n")  # the preempted attempt's
    again = start_job(spec)
    assert again.finish()[0] == 0
    marker = _exit_marker(again.run_dir)
    assert marker is not None and marker.exit_code == 0


# ─── checkpoint: the signal reaches the command, which saves and exits ─────────────────────────

# A training in miniature, in bash: counts to $HPCOPS_PARAM_TARGET from its checkpoint, and on
# USR1 saves its count into $HPCOPS_CHECKPOINT_DIR and exits 0.
COUNTER = """\
ckpt="$HPCOPS_CHECKPOINT_DIR/count"
n=0
[ -f "$ckpt" ] && n=$(cat "$ckpt")
save() { echo "$n" > "$ckpt.tmp" && mv "$ckpt.tmp" "$ckpt"; }
trap 'save; echo "attempt $HPCOPS_ATTEMPT saved $n"; exit 0' USR1
echo "attempt $HPCOPS_ATTEMPT starts at $n"
touch "$HPCOPS_RUN_DIR/ready"
while [ "$n" -lt "$HPCOPS_PARAM_TARGET" ]; do sleep 0.05; n=$((n + 1)); done
echo "$n" > "$ckpt"
echo "attempt $HPCOPS_ATTEMPT reached $n"
"""


def counter(target: int, command: str = COUNTER, **fields: object) -> Spec:
    return spec_with(
        command,
        params={"target": target},
        resources={"time": "00:05:00"},
        retry={"max_attempts": 3, "on": ["TIMEOUT"]},
        checkpoint={"signal": "USR1", "before_s": 30},
        **fields,
    )


def wait_for_text(path: Path, text: str, timeout_s: float = 20) -> float:
    """Seconds until `path` holds `text`."""
    started = time.monotonic()
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() - started < timeout_s, f"{path} never said {text!r}"
        time.sleep(0.01)
    return time.monotonic() - started


def test_the_checkpoint_signal_reaches_the_command_which_saves_and_the_job_ends_timeout(
    start_job: StartJob,
) -> None:
    # Attempt 1: Slurm's --signal=B:USR1@30 signals the script only; the script passes it on.
    job = start_job(counter(10_000))
    job.wait_for(job.run_dir.path / "ready")
    time.sleep(0.3)  # a few steps counted
    job.process.send_signal(signal.SIGUSR1)
    saved_after_s = wait_for_text(job.run_dir.stdout, "attempt 1 saved")
    assert saved_after_s < 2, "the command must save well within before_s (30 s)"
    checkpoint = job.run_dir.path / "checkpoint" / "count"
    saved = int(checkpoint.read_text())
    assert 0 < saved < 10_000
    # The command ended with 0 after the signal: the job waits for its time limit, so that
    # Slurm records it TIMEOUT (as it would have without the save), not COMPLETED.
    wait_for_text(job.run_dir.stderr, "the job waits for its time limit")
    time.sleep(0.3)
    assert job.process.poll() is None, "the job ended before its time limit"
    assert not job.run_dir.exit_marker.exists()
    job.process.send_signal(signal.SIGUSR1)  # another warning changes nothing
    time.sleep(0.2)
    assert job.process.poll() is None
    os.killpg(job.process.pid, signal.SIGTERM)  # the time limit, as Slurm ends a job
    status, out, _ = job.finish()
    assert status == 143
    marker = _exit_marker(job.run_dir)
    assert marker is not None and marker.exit_code == 143
    assert out.splitlines() == ["attempt 1 starts at 0", f"attempt 1 saved {saved}"]

    # Attempt 2 in the same run directory: the checkpoint is there, the job resumes from it.
    again = start_job(counter(saved + 5), attempt=2)
    status, out, err = again.finish()
    assert status == 0, err
    assert out.splitlines() == [f"attempt 2 starts at {saved}", f"attempt 2 reached {saved + 5}"]
    assert "waits for its time limit" not in err
    marker = _exit_marker(again.run_dir)
    assert marker is not None and marker.exit_code == 0


def test_a_command_that_fails_after_the_signal_ends_the_job_at_once(start_job: StartJob) -> None:
    job = start_job(counter(10_000, command=COUNTER.replace("exit 0' USR1", "exit 3' USR1")))
    job.wait_for(job.run_dir.path / "ready")
    job.process.send_signal(signal.SIGUSR1)
    status, _, err = job.finish()
    assert status == 3
    assert "waits for its time limit" not in err


def test_without_checkpoint_a_command_that_exits_after_the_signal_ends_the_job(
    start_job: StartJob,
) -> None:
    # A --signal in extra_directives is a warning only: the job ends with the command.
    spec = counter(10_000).model_copy(
        update={"checkpoint": None, "extra_directives": ["--signal=B:USR1@60"]}
    )
    job = start_job(spec)
    job.wait_for(job.run_dir.path / "ready")
    job.process.send_signal(signal.SIGUSR1)
    status, out, err = job.finish()
    assert status == 0 and "attempt 1 saved" in out
    assert "waits for its time limit" not in err


def test_the_checkpoint_directory_exists_before_the_command_and_outlives_the_job(
    start_job: StartJob,
) -> None:
    command = (
        'test -d "$HPCOPS_CHECKPOINT_DIR" || exit 7\n'
        'echo "$HPCOPS_ATTEMPT" >> "$HPCOPS_CHECKPOINT_DIR/attempts"\n'
        '[ "$HPCOPS_CHECKPOINT_DIR" = "$HPCOPS_RUN_DIR/checkpoint" ] || exit 8\n'
    )
    for attempt in (1, 2, 3):
        job = start_job(spec_with(command), attempt=attempt)
        assert job.finish()[0] == 0
    attempts = job.run_dir.path / "checkpoint" / "attempts"
    assert attempts.read_text() == "1\n2\n3\n"
