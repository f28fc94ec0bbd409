"""Reading specs: the malformed-spec corpus, the pure parsers, YAML's traps, the round trip."""

from __future__ import annotations

import contextlib
import random
import re
import time
from pathlib import Path

import pytest
from spec_corpus import BAD_SPECS_DIR, assert_refused, bad_spec_files
from spec_corpus import problems as problems_of

from hpcops.errors import InvalidInput, SpecError
from hpcops.spec import (
    MAX_SPEC_BYTES,
    MODELLED_OPTIONS,
    Resources,
    Spec,
    extra_directive_problem,
    load_spec_file,
    parse_mem_mb,
    parse_slurm_time,
    parse_spec,
    spec_to_yaml,
)
from hpcops.spec.directives import SBATCH_LONG_OPTIONS
from hpcops.tracking.rerun import apply_overrides

GOLDEN_DIR = Path(__file__).parent / "golden"
MINIMAL_YAML = "name: mnist-baseline\nexperiment: mnist\ncommand: python train.py\n"

# ─── the malformed-spec corpus ─────────────────────────────────────────────────────────────────

# file in tests/fixtures/bad_specs → (location of the problem, a phrase its message must hold).
# Location "" is the file as a whole.
BAD_SPECS: dict[str, tuple[str, str]] = {
    "alias_only.yaml": ("name", "aliases are not allowed"),
    "billion_laughs.yaml": ("a", "anchors and aliases are not allowed"),
    "binary.bin": ("", "not UTF-8 text: byte 0x80 at byte offset 136"),
    "command_carriage_return.yaml": ("command", "a carriage return"),
    "command_empty.yaml": ("command", "is empty; e.g. command: python train.py"),
    "cpus_fraction.yaml": ("resources.cpus_per_task", "expected an integer; got the number 2.5"),
    "cpus_zero.yaml": ("resources.cpus_per_task", "must be between 1 and 256; got 0"),
    "deep_nesting.yaml": ("params[0]", "nesting deeper than 32 levels"),
    "duplicate_key.yaml": ("resources.nodes", "duplicate key 'nodes' (lines 5 and 7)"),
    "empty.yaml": ("", "the spec is empty; a minimal spec is:\n      name: mnist-baseline"),
    "env_bad_key.yaml": ("env['MY VAR']", "contains a space"),
    "env_hpcops_key.yaml": ("env.HPCOPS_RUN_DIR", "HPCOPS_* is hpcops' own"),
    "env_path.yaml": ("env.PATH", "extend it in the command instead"),
    "env_slurm_key.yaml": ("env.SLURM_JOB_ID", "Slurm sets SLURM_* variables"),
    "env_value_list.yaml": ("env.CUDA_VISIBLE_DEVICES", "expected a string; got a list"),
    "escape_sequence.yaml": ("", "control character U+001B at line 2, column 13 (byte offset 24)"),
    "experiment_too_long.yaml": ("experiment", "is 101 characters long; at most 100"),
    "extra_directive_abbreviation.yaml": ("extra_directives[0]", "would read as --account"),
    "extra_directive_newline.yaml": ("extra_directives[0]", "the value contains a newline"),
    "extra_directive_partition.yaml": ("extra_directives[0]", "use resources.partition"),
    "extra_directive_semicolon.yaml": ("extra_directives[0]", "contains a semicolon (;)"),
    "extra_directive_short_option.yaml": ("extra_directives[0]", "use the long form"),
    "extra_directive_space.yaml": ("extra_directives[0]", "with '=' rather than a space"),
    "extra_directive_twice.yaml": ("extra_directives", "--constraint is given twice"),
    "extra_directive_wait.yaml": ("extra_directives[0]", "--wait is not accepted here"),
    "gpu_type_backticks.yaml": ("resources.gpu_type", "contains a backtick (`) at position 5"),
    "gpu_type_quote.yaml": ("resources.gpu_type", "contains a quote (')"),
    "gpu_type_without_gpus.yaml": ("resources.gpu_type", "resources.gpus is 0"),
    "gpus_absurd.yaml": ("resources.gpus", "must be between 0 and 16; got 99"),
    "latin1.yaml": ("", "not UTF-8 text: byte 0xe8 at byte offset 9"),
    "mem_gb_suffix.yaml": ("resources.mem", "write 4G, without the B"),
    "mem_lots.yaml": ("resources.mem", "not a memory size; got 'lots'"),
    "mem_space.yaml": ("resources.mem", "e.g. mem: 16G"),
    "mem_zero.yaml": ("resources.mem", "must be at least 1M"),
    "missing_command.yaml": ("command", "is required; e.g. command: python train.py"),
    "misspelled_nested_key.yaml": ("resources.cpus_per_tsk", "did you mean 'cpus_per_task'?"),
    "name_command_substitution.yaml": ("name", "contains a dollar sign ($) at position 1"),
    "name_newline.yaml": ("name", "contains a newline at position 6"),
    "name_sbatch.yaml": ("name", "contains a space at position 2"),
    "nodes_boolean.yaml": ("resources.nodes", "expected an integer; got the boolean true"),
    "nodes_negative.yaml": ("resources.nodes", "must be between 1 and 64; got -1"),
    "nodes_quoted_number.yaml": ("resources.nodes", "write the number without quotes"),
    "non_string_key.yaml": ("params", "keys must be strings: quote it, '1'"),
    "not_yaml.yaml": ("", "not valid YAML at line 2, column 11"),
    "ntasks_absurd.yaml": ("resources.ntasks", "must be between 1 and 1024; got 1000000"),
    "nul_byte.yaml": ("", "a NUL byte at line 1, column 12 (byte offset 11)"),
    "only_comments.yaml": ("", "the spec is empty (it holds only comments or null)"),
    "param_infinite.yaml": ("params.lr", "must be a finite number"),
    "param_key_dash.yaml": ("params.learning-rate", "contains '-' at position 9"),
    "param_keys_collide.yaml": ("params", "would both become the environment variable"),
    "param_value_control_char.yaml": ("params.note", "control character U+0007"),
    "param_value_list.yaml": ("params.layers", "got a list of 2 items"),
    "param_value_null.yaml": ("params.seed", "is empty (null)"),
    "partition_at_top_level.yaml": ("partition", "partition belongs under resources"),
    "partition_backticks.yaml": ("resources.partition", "contains a backtick (`)"),
    "partition_newline_sbatch.yaml": ("resources.partition", "contains a newline at position 4"),
    "priority_absurd.yaml": ("priority", "must be between -1000 and 1000"),
    "python_object_tag.yaml": ("name", "YAML tag '!!python/object/apply:os.system'"),
    "qos_command_substitution.yaml": ("resources.qos", "contains a dollar sign ($)"),
    "resources_not_mapping.yaml": ("resources", "expected a mapping; got the string 'big'"),
    "tab_indented.yaml": ("", "YAML indents with spaces, not tabs"),
    "template_path.yaml": ("template", "contains '.' at position 1"),
    "time_command_substitution.yaml": ("resources.time", "not a Slurm time limit"),
    "time_hours_suffix.yaml": ("resources.time", "write 02:00:00 for 2h"),
    "time_over_30_days.yaml": ("resources.time", "must be at most 30 days"),
    "time_unlimited.yaml": ("resources.time", "must be at most 30 days"),
    "time_zero.yaml": ("resources.time", "must be at least 1 minute"),
    "top_level_list.yaml": ("", "must be a YAML mapping of fields; got a list"),
    "top_level_string.yaml": ("", "must be a YAML mapping of fields; got the string"),
    "two_documents.yaml": ("", "a second YAML document starts at line 4"),
    "unknown_key.yaml": ("nmae", "unknown field 'nmae'; did you mean 'name'?"),
    "workdir_tilde.yaml": ("workdir", "starts with '~'"),
}


def test_every_bad_spec_has_an_expectation_and_the_reverse() -> None:
    # The sweep_* files are test_spec_sweep.py's corpus, the retry_* and checkpoint_* files
    # test_spec_retry.py's, each checked there both ways.
    assert bad_spec_files(besides=("sweep_", "retry_", "checkpoint_")) == sorted(BAD_SPECS)


@pytest.mark.parametrize("filename", sorted(BAD_SPECS))
def test_a_bad_spec_is_refused_naming_the_field(filename: str) -> None:
    assert_refused(filename, *BAD_SPECS[filename])


def test_a_10_mb_file_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.write(MINIMAL_YAML.encode())
        f.write(b"# padding\n" * (1024 * 1024))  # 10 MiB and a bit
    size = path.stat().st_size
    [(location, message)] = problems_of(lambda: load_spec_file(path))
    assert location == ""
    assert f"the spec is {size} bytes; the limit is {MAX_SPEC_BYTES} bytes" in message


def test_the_size_limit_holds_for_text_and_bytes_alike() -> None:
    just_over = MINIMAL_YAML + "#" * (MAX_SPEC_BYTES - len(MINIMAL_YAML)) + "\n"
    for data in (just_over, just_over.encode()):
        [(_, message)] = problems_of(lambda data=data: parse_spec(data, "t"))
        assert f"the limit is {MAX_SPEC_BYTES} bytes" in message
    # multi-byte characters count as bytes, not characters
    wide = MINIMAL_YAML + "# " + "é" * (MAX_SPEC_BYTES // 2) + "\n"
    assert len(wide) < MAX_SPEC_BYTES
    problems_of(lambda: parse_spec(wide, "t"))


def test_a_spec_just_under_the_limit_is_read_quickly() -> None:
    data = MINIMAL_YAML + "#" * (MAX_SPEC_BYTES - len(MINIMAL_YAML) - 1) + "\n"
    assert len(data) == MAX_SPEC_BYTES
    started = time.perf_counter()
    assert parse_spec(data, "t").name == "mnist-baseline"
    assert time.perf_counter() - started < 2


def test_the_billion_laughs_is_refused_at_once() -> None:
    started = time.perf_counter()
    problems_of(lambda: load_spec_file(BAD_SPECS_DIR / "billion_laughs.yaml"))
    assert time.perf_counter() - started < 1


def test_an_unreadable_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    [(_, missing)] = problems_of(lambda: load_spec_file(tmp_path / "nope.yaml"))
    assert "cannot read the spec file: No such file or directory" in missing
    [(_, folder)] = problems_of(lambda: load_spec_file(tmp_path))
    assert "cannot read the spec file" in folder


def test_several_problems_are_reported_together() -> None:
    data = (
        "name: 'a b'\nexperiment: e\ncommand: c\nresources: {nodes: 0, mem: lots}\n"
        "env: {SLURM_X: '1'}\n"
    )
    locations = {loc for loc, _ in problems_of(lambda: parse_spec(data, "t"))}
    assert locations == {"name", "resources.nodes", "resources.mem", "env.SLURM_X"}


def test_parse_spec_raises_nothing_but_spec_error_on_mangled_input() -> None:
    # No hypothesis in the venv: a seeded mutation fuzzer over the golden examples instead.
    rng = random.Random(20240601)
    seeds = [p.read_bytes() for p in sorted(GOLDEN_DIR.glob("*.yaml"))]
    alphabet = b" \t\n:-[]{}&*!|>'\"#%@`,?\x00\xff\xc3\x80\\0123456789abcdefgxyz"
    for _ in range(1500):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data) + 1)
            op = rng.randrange(3)
            if op == 0:
                data[i:i] = bytes(rng.choices(alphabet, k=rng.randint(1, 4)))
            elif op == 1:
                del data[i : i + rng.randint(1, 12)]
            else:
                data[i : i + 1] = bytes([rng.choice(alphabet)])
        with contextlib.suppress(SpecError):  # anything else fails the test
            parse_spec(bytes(data), "fuzz")


# ─── Slurm time and memory ─────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1-02:03:04", 93784),
        ("90", 5400),  # minutes
        ("0", 0),
        ("10:30", 630),  # minutes:seconds
        ("01:00:00", 3600),
        ("1:30:00", 5400),
        ("48:00:00", 172800),  # the leading field may exceed a clock's
        ("2-12", 216000),  # days-hours
        ("1-00:30", 88200),  # days-hours:minutes
        ("30-00:00:00", 2592000),
        ("0:59", 59),
        ("0000090", 5400),
    ],
)
def test_parse_slurm_time(text: str, seconds: int) -> None:
    assert parse_slurm_time(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", " 60", "60\n", "1:60", "1:00:60", "1:60:00", "1-24", "1-2:60", "abc", "1h", "-1",
     "1:2:3:4", "1-", "-1:00", "1.5", "UNLIMITED", "１０"],
)  # fmt: skip
def test_parse_slurm_time_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"MM:SS|must be"):
        parse_slurm_time(text)


@pytest.mark.parametrize(
    ("text", "mb"),
    [("512M", 512), ("4G", 4096), ("1T", 1048576), ("4096", 4096), ("4g", 4096), ("0", 0),
     ("16T", 16777216), ("1m", 1)],
)  # fmt: skip
def test_parse_mem_mb(text: str, mb: int) -> None:
    assert parse_mem_mb(text) == mb


@pytest.mark.parametrize(
    ("text", "hint"),
    [("4GB", "write 4G"), ("1.5G", "1536M"), ("512K", "smallest unit"), ("", "not a memory"),
     ("lots", "not a memory"), ("-1", "not a memory"), ("4 G", "not a memory"),
     ("4P", "not a memory"), ("٤G", "not a memory")],
)  # fmt: skip
def test_parse_mem_mb_refuses_with_a_hint(text: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse_mem_mb(text)


def test_resource_properties() -> None:
    r = Resources(mem="2G", time="00:01:30")
    assert r.mem_mb == 2048
    assert r.time_limit_s == 90
    assert r.time_limit_min == 2  # Slurm counts minutes: round up
    assert Resources().mem_mb is None
    assert Resources().time_limit_min == 60


def test_yaml_integers_for_time_and_mem() -> None:
    spec = parse_spec(MINIMAL_YAML + "resources: {time: 90, mem: 4096}\n", "t")
    assert spec.resources.time == "90" and spec.resources.time_limit_s == 5400
    assert spec.resources.mem == "4096" and spec.resources.mem_mb == 4096


@pytest.mark.parametrize(("mem", "ok"), [("16T", True), ("16385G", False), ("1M", True)])
def test_mem_range(mem: str, ok: bool) -> None:
    data = MINIMAL_YAML + f"resources: {{mem: {mem}}}\n"
    if ok:
        assert parse_spec(data, "t").resources.mem == mem
    else:
        [(location, message)] = problems_of(lambda: parse_spec(data, "t"))
        assert location == "resources.mem" and "at most 16T" in message


# ─── YAML's traps ──────────────────────────────────────────────────────────────────────────────


def test_yaml_1_1_surprises_are_read_as_written() -> None:
    spec = parse_spec(
        MINIMAL_YAML
        + "resources: {partition: on, time: 1:30:00, nodes: 010, qos: no}\n"
        + "params: {answer: yes, day: 2024-01-01, ratio: 1e3, version: 1.10, hex: 0x10}\n",
        "t",
    )
    r = spec.resources
    assert (r.partition, r.time, r.nodes, r.qos) == ("on", "1:30:00", 10, "no")
    assert r.time_limit_s == 5400  # YAML 1.1 would have made it the integer 5400: 90 hours
    assert spec.params == {
        "answer": "yes", "day": "2024-01-01", "ratio": 1000.0, "version": 1.1, "hex": "0x10",
    }  # fmt: skip


def test_booleans_nulls_and_numbers_follow_yaml_1_2() -> None:
    spec = parse_spec(
        MINIMAL_YAML + "params: {a: true, b: False, c: -7, d: +3, e: .5, f: '42', g: ''}\n"
        "workdir: ~\n",
        "t",
    )
    assert spec.params == {"a": True, "b": False, "c": -7, "d": 3, "e": 0.5, "f": "42", "g": ""}
    assert spec.workdir is None


def test_env_and_tag_values_may_be_yaml_scalars() -> None:
    spec = parse_spec(
        MINIMAL_YAML + "env: {A: 8, B: true, C: 0.5, D: text}\ntags: {seed: 42, fast: false}\n",
        "t",
    )
    assert spec.env == {"A": "8", "B": "true", "C": "0.5", "D": "text"}
    assert spec.tags == {"seed": "42", "fast": "false"}


def test_a_byte_order_mark_and_crlf_line_ends_are_fine() -> None:
    data = ("\ufeff" + MINIMAL_YAML + "command: |\n  echo a\n  echo b\n").replace("\n", "\r\n")
    data = data.replace("command: python train.py\r\n", "", 1)
    assert parse_spec(data.encode(), "t").command == "echo a\necho b\n"


def test_a_string_with_an_unpaired_surrogate_is_refused() -> None:
    [(_, message)] = problems_of(lambda: parse_spec(MINIMAL_YAML + "# \udc80\n", "t"))
    assert "surrogate" in message


def test_keys_that_yaml_reads_as_collections_are_refused() -> None:
    problems = problems_of(lambda: parse_spec(MINIMAL_YAML + "? [a, b]\n: 1\n", "t"))
    assert any("keys must be strings" in message for _, message in problems)


def _alias_bomb(levels: int = 10) -> str:
    """A 'billion laughs' of `levels` levels: a few hundred bytes, 9**levels strings expanded."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_recorded_spec_with_an_alias_bomb_is_refused_quickly() -> None:
    # `hpcops rerun` reads the spec recorded in MLflow. It went through yaml.safe_load, whose
    # result the rerun then serialises (json.dumps): these ~480 bytes become 9**10 (3.5 billion)
    # strings, past 4 GB. Now it goes through the spec's own reader, which refuses the anchor.
    bomb = _alias_bomb()
    assert len(bomb) < 600
    started = time.perf_counter()
    with pytest.raises(InvalidInput) as info:
        apply_overrides(bomb, {"params.lr": "0.1"})
    assert time.perf_counter() - started < 1
    assert str(info.value) == (
        "the recorded spec cannot be read: l0: YAML anchor '&l0' at line 1, column 5: anchors "
        "and aliases are not allowed in a spec; write each value out in full"
    )


def test_a_recorded_spec_is_read_with_the_spec_reader() -> None:
    recorded = MINIMAL_YAML + "resources: {time: 1:30:00, partition: on}\n"
    data = apply_overrides(recorded, {"params.lr": "0.1"})
    assert data["resources"] == {"time": "1:30:00", "partition": "on"}  # YAML 1.2, as a spec
    assert data["params"] == {"lr": 0.1}
    too_big = "a: " + "x" * MAX_SPEC_BYTES + "\n"
    with pytest.raises(InvalidInput, match="the limit is 1048576 bytes"):
        apply_overrides(too_big, {})
    with pytest.raises(InvalidInput, match="duplicate key 'name'"):
        apply_overrides(MINIMAL_YAML + "name: again\n", {})


# ─── messages ──────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("yaml_text", "location", "phrase"),
    [
        ("nmae: x\n", "nmae", "did you mean 'name'?"),
        ("comand: x\n", "comand", "did you mean 'command'?"),
        ("resources: {cpus-per-task: 2}\n", "resources.cpus-per-task", "'cpus_per_task'"),
        ("resources: {gres: 'gpu:2'}\n", "resources.gres", "gpus and gpu_type"),
        ("resources: {command: x}\n", "resources.command", "belongs at the top level"),
        ("gpus: 2\n", "gpus", "belongs under resources"),
        ("account: other\n", "account", "hpcops sets it itself"),
        ("xyzzy: 1\n", "xyzzy", "Allowed fields in a spec: name, experiment, command"),
    ],
)
def test_unknown_fields_get_a_suggestion(yaml_text: str, location: str, phrase: str) -> None:
    problems = problems_of(lambda: parse_spec(MINIMAL_YAML + yaml_text, "t"))
    assert any(loc == location and phrase in msg for loc, msg in problems), problems


@pytest.mark.parametrize(
    ("yaml_text", "location", "phrase"),
    [
        ("name: 42\n", "name", "quote it: '42'"),
        ("name: true\n", "name", "YAML reads true and false as booleans"),
        ("name:\n", "name", "give it a value, or remove the line"),
        ("resources: {nodes: 2.0}\n", "resources.nodes", "(write 2)"),
        ("params: [a]\n", "params", "expected a mapping"),
        ("extra_directives: --exclusive\n", "extra_directives", "expected a list"),
        ("experiment: ' mnist'\n", "experiment", "spaces at its start or end"),
        ('experiment: "a\\u00a0b"\n', "experiment", "unprintable"),
        ("workdir: data\n", "workdir", "must be an absolute path"),
        ('command: "\\x01"\n', "command", "U+0001"),
        ('tags: {note: "' + "x" * 257 + '"}\n', "tags.note", "at most 256"),
        ("resources: {partition: 'gpu,,cpu'}\n", "resources.partition", "comma-separated"),
        ("resources: {time: '1:75:00'}\n", "resources.time", "minutes after the hours"),
        ("env: {_: x}\n", "env._", "rewrites it"),
        ("env: {BASH_ENV: /tmp/x}\n", "env.BASH_ENV", "BASH_ENV"),
        ("params: {'1x': 1}\n", "params.1x", "starts with '1'"),
    ],
)
def test_messages_name_the_field_and_what_is_allowed(
    yaml_text: str, location: str, phrase: str
) -> None:
    key = yaml_text.split(":")[0]  # the field replaces the minimal spec's own, if it has one
    base = "".join(
        line for line in MINIMAL_YAML.splitlines(keepends=True) if not line.startswith(f"{key}:")
    )
    problems = problems_of(lambda: parse_spec(base + yaml_text, "t"))
    assert any(loc == location and phrase in msg for loc, msg in problems), problems


def test_a_long_command_is_measured_in_bytes() -> None:
    ok = "echo " + "é" * 30000  # 60,005 bytes
    assert parse_spec(MINIMAL_YAML.replace("python train.py", ok), "t").command == ok
    too_long = "echo " + "é" * 33000  # 66,005 bytes, fewer than 65,536 characters
    problems = problems_of(
        lambda: parse_spec(MINIMAL_YAML.replace("python train.py", too_long), "t")
    )
    assert problems[0][0] == "command" and "bytes; at most 65536" in problems[0][1]


@pytest.mark.parametrize(
    ("item", "phrase"),
    [
        ("--constraint=skylake", None),
        ("--requeue", None),
        ("--mail-type=END,FAIL", None),
        ("--exclude=node13", None),
        ("--reservation=neurips", None),
        ("--cpu-freq=high", None),
        ("--signal=B:USR1@60", None),
        ("--mail-user=ana@uni.example", None),
        ("--gres-flags=enforce-binding", None),
        ("--time-min=60", "use resources.time"),
        ("--nodelist=node01", "allocates every node listed"),
        ("--partition=gpu", "use resources.partition"),
        ("--mem-per-cpu=4G", "use resources.mem"),
        ("--gpus-per-node=2", "use resources.gpus"),
        ("--export=ALL", "use env"),
        ("--chdir=/tmp", "use workdir"),
        ("--part=gpu", "would read as --partition"),
        ("--par=gpu", "abbreviates options that are not accepted here (--parsable, --partition)"),
        ("--ti=10", "(--time, --time-min)"),
        ("--exclusiv", "would read as --exclusive"),
        ("--Partition=gpu", "lower-case"),
        ("-N 2", "use the long form"),
        ("#SBATCH --exclusive", "without '#SBATCH'"),
        ("constraint=ib", "must start with '--'"),
        ("--constraint=", "no value"),
        ("--constraint='ib'", "a quote"),
        ("--constraint=$(id)", "a dollar sign"),
        ("--constraint=`id`", "a backtick"),
        ("--comment=x", "submission token"),
    ],
)
def test_extra_directive_problem(item: str, phrase: str | None) -> None:
    problem = extra_directive_problem(item)
    if phrase is None:
        assert problem is None
    else:
        assert problem is not None and phrase in problem, problem


# ─── files, workdir, canonical YAML ────────────────────────────────────────────────────────────


def test_load_spec_file_resolves_workdir_against_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "none.yaml").write_text(MINIMAL_YAML)
    (folder / "relative.yaml").write_text(MINIMAL_YAML + "workdir: code/src\n")
    (folder / "absolute.yaml").write_text(MINIMAL_YAML + "workdir: /srv/mnist\n")
    (folder / "null.yaml").write_text(MINIMAL_YAML + "workdir: null\n")
    assert load_spec_file(folder / "none.yaml").workdir == str(folder)
    assert load_spec_file(folder / "null.yaml").workdir == str(folder)
    assert load_spec_file(folder / "relative.yaml").workdir == str(folder / "code" / "src")
    assert load_spec_file(str(folder / "absolute.yaml")).workdir == "/srv/mnist"


def test_parse_spec_refuses_a_relative_workdir() -> None:
    [(location, message)] = problems_of(lambda: parse_spec(MINIMAL_YAML + "workdir: src\n", "t"))
    assert location == "workdir" and "absolute path" in message


def round_trip(spec: Spec) -> None:
    text = spec_to_yaml(spec)
    again = parse_spec(text, "canonical")
    assert again == spec, text
    assert spec_to_yaml(again) == text


@pytest.mark.parametrize("name", ["minimal", "gpu", "nasty"])
def test_spec_to_yaml_round_trips_the_examples(name: str) -> None:
    round_trip(parse_spec((GOLDEN_DIR / f"{name}.yaml").read_bytes(), name))


def test_spec_to_yaml_writes_every_field_in_order() -> None:
    text = spec_to_yaml(parse_spec(MINIMAL_YAML, "t"))
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")]
    # Every field, except absent optional blocks: specs without them keep their old hash.
    absent = {"schedule", "sweep", "retry", "checkpoint"}
    assert keys == [name for name in Spec.model_fields if name not in absent]
    assert "  time: 01:00:00\n" in text


# Strings that YAML would read as something else unless quoted: the canonical writer must quote.
TRICKY_STRINGS = [
    "yes", "no", "on", "off", "true", "False", "null", "~", "", "1", "-1", "1.5", "1e3", ".inf",
    ".nan", "0x10", "010", "1:30", "1:30:00", "2024-01-01", "1_000", "- a", "a: b", "#x", "x #y",
    "[a]", "{a}", "*a", "&a", "!a", "|", ">", "'", '"', "%x", "@x", "`x`", " lead", "trail ",
    "ünï ✓", "=", "<<", "?", "-", "---", "...",
]  # fmt: skip


def random_spec(rng: random.Random) -> Spec:
    def text(max_len: int = 12) -> str:
        if rng.random() < 0.4:
            return rng.choice(TRICKY_STRINGS)
        chars = "ab XYZ09:-#'\"$`\\{}[],&*!|>%@é✓"
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, max_len)))

    def scalar() -> str | int | float | bool:
        kind = rng.randrange(4)
        if kind == 0:
            return text()
        if kind == 1:
            return rng.randint(-(10**12), 10**12)
        if kind == 2:
            return rng.choice([0.1, -2.5, 1e-05, 1e16, 3.0, 123456.789])
        return rng.random() < 0.5

    lines = ["python train.py", "echo 'a b' \"c\"", "  indented", "tab\there", "", "x: y", "# c"]
    command = "\n".join(rng.choice(lines) for _ in range(rng.randint(1, 4)))
    if not command.strip():
        command = "true"
    if rng.random() < 0.5:
        command += "\n"
    return Spec.model_validate(
        {
            "name": rng.choice(["a", "mnist-1", "x.y_z", "0lead"]),
            "experiment": rng.choice(["mnist", "yes", "1.5", "a: b", "#x", "ünï ✓", "null x"]),
            "command": command,
            "workdir": rng.choice([None, "/srv/a b", "/x/'q'/\"dq\"", "/true"]),
            "params": {f"p{i}": scalar() for i in range(rng.randint(0, 6))},
            "env": {f"E{i}": text() for i in range(rng.randint(0, 4))},
            "resources": {
                "partition": rng.choice([None, "gpu", "on", "1", "gpu,cpu"]),
                "nodes": rng.randint(1, 64),
                "mem": rng.choice([None, "4G", "512", "1T"]),
                "gpus": 1,
                "gpu_type": rng.choice([None, "a100", "true", "1.5"]),
                "time": rng.choice(["01:00:00", "90", "1:30:00", "2-12", "10:30"]),
                "qos": rng.choice([None, "no", "null", "high"]),
            },
            "priority": rng.randint(-1000, 1000),
            "template": rng.choice(["default", "1", "no"]),
            "extra_directives": rng.choice([[], ["--requeue"], ["--constraint=a:b,c"]]),
            "tags": {f"t{i}": text() for i in range(rng.randint(0, 3))},
        }
    )


def test_spec_to_yaml_round_trips_random_specs() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        round_trip(random_spec(rng))


def test_begin_and_deadline_are_refused_as_extra_directives() -> None:
    # A run pending in Slurm until a date would hold one of the lab's release slots meanwhile.
    for option in ("--begin=now+1hour", "--deadline=2030-01-01T00:00:00"):
        text = f"name: x\nexperiment: e\ncommand: 'true'\nextra_directives: ['{option}']\n"
        with pytest.raises(SpecError) as info:
            parse_spec(text, "spec.yaml")
        assert "extra_directives" in str(info.value), str(info.value)


# ─── extra_directives that shape the allocation (issue 12, item 8) ───────────────────────────────
# A run is counted by its resources: fields (quotas, fair share, the release window); an
# extra_directive that changes what Slurm allocates made a run counted as 1 CPU hold 16.


@pytest.mark.parametrize(
    ("item", "use"),
    [
        # CPUs and how tasks are packed
        ("--mincpus=16", "resources.cpus_per_task"),
        ("--exclusive", "resources.cpus_per_task"),
        ("--exclusive=user", "resources.cpus_per_task"),
        ("--ntasks-per-core=1", "resources.cpus_per_task"),
        ("--ntasks-per-node=4", "resources.nodes"),
        ("--ntasks-per-socket=2", "resources.cpus_per_task"),
        ("--ntasks-per-gpu=2", "resources.cpus_per_task"),
        ("--cpus-per-gpu=8", "resources.cpus_per_task"),
        ("--cores-per-socket=8", "resources.cpus_per_task"),
        ("--sockets-per-node=2", "resources.cpus_per_task"),
        ("--threads-per-core=1", "resources.cpus_per_task"),
        ("--extra-node-info=2:8:1", "resources.cpus_per_task"),
        ("--hint=nomultithread", "resources.cpus_per_task"),
        ("--core-spec=2", "resources.cpus_per_task"),
        ("--thread-spec=2", "resources.cpus_per_task"),
        ("--overcommit", "resources.cpus_per_task"),
        # nodes
        ("--nodes=4", "resources.nodes"),
        ("--nodelist=node01,node02", "resources.nodes"),
        ("--nodefile=/etc/hosts", "resources.nodes"),
        ("--spread-job", "resources.nodes"),
        # memory
        ("--mem-per-cpu=4G", "resources.mem"),
        ("--mem-per-gpu=16G", "resources.mem"),
        # GPUs
        ("--gres=gpu:4", "resources.gpus"),
        ("--gpus=4", "resources.gpus"),
        ("--gpus-per-node=2", "resources.gpus"),
        ("--gpus-per-task=1", "resources.gpus"),
        ("--gpus-per-socket=1", "resources.gpus"),
        ("--tres-per-task=gres/gpu:1", "resources.gpus"),
        # time
        ("--time-min=30", "resources.time"),
        # what hpcops owns
        ("--array=0-99", "one spec per task"),
        ("--export=ALL", "env"),
        ("--export-file=/etc/environment", "env"),
        ("--get-user-env", "env"),
        ("--chdir=/tmp", "workdir"),
        ("--output=/tmp/x", "stdout.log"),
        ("--error=/tmp/x", "stderr.log"),
        ("--input=/etc/shadow", "its own input"),
        ("--nice=-10000", "use priority"),
        ("--uid=alice", "daemon's account"),
        ("--gid=lab", "daemon's account"),
        ("--reboot", "admins"),
        ("--bbf=/etc/shadow", "use --bb"),
        ("--help", "submit nothing"),
        ("--version", "submit nothing"),
        ("--quiet", "sbatch's own output"),
        ("--cluster-constraint=x", "one cluster"),
    ],
)
def test_allocation_shaping_and_hpcops_owned_options_are_refused(item: str, use: str) -> None:
    text = (
        f"name: x\nexperiment: e\ncommand: 'true'\nextra_directives: [--mail-type=END, '{item}']\n"
    )
    with pytest.raises(SpecError) as info:
        parse_spec(text, "x.yaml")
    [problem] = info.value.problems
    option = item.partition("=")[0]
    assert problem.location == "extra_directives[1]"
    assert option in problem.message and use in problem.message, problem.message


@pytest.mark.parametrize(
    "item",
    [
        "--mail-type=END,FAIL",
        "--mail-user=ana@uni.example",
        "--constraint=ib",
        "--prefer=a100",
        "--exclude=node13",
        "--contiguous",
        "--switches=1",
        "--tmp=100G",
        "--licenses=matlab:1",
        "--reservation=neurips",
        "--signal=B:USR1@60",
        "--requeue",
        "--no-requeue",
        "--no-kill",
        "--oversubscribe",
        "--distribution=block",
        "--gres-flags=enforce-binding",
        "--gpu-bind=closest",
        "--mem-bind=local",
        "--cpu-freq=high",
        "--wckey=paper",
        "--profile=task",
        "--acctg-freq=30",
        "--bb=capacity=1G",
    ],
)
def test_options_that_leave_the_allocation_as_counted_are_allowed(item: str) -> None:
    text = f"name: x\nexperiment: e\ncommand: 'true'\nextra_directives: ['{item}']\n"
    assert parse_spec(text, "x.yaml").extra_directives == [item]


def test_every_refused_option_is_an_sbatch_option_and_says_what_to_do() -> None:
    for option, instead in MODELLED_OPTIONS.items():
        assert re.fullmatch(r"[a-z][a-z0-9-]+", option)
        # tres-per-task: newer Slurm's (23.02); refused ahead of an upgrade
        assert option in SBATCH_LONG_OPTIONS or option == "tres-per-task", option
        assert instead and not instead.endswith("."), option
