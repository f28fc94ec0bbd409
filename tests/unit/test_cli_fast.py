"""The fast entry (`hpcops.cli.fast`): which calls it answers, and that for those it sends,
prints and exits exactly as the click command does, without importing click."""

from __future__ import annotations

import ast
import json
import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcops.api import protocol
from hpcops.api.handlers.queue import parse_file_text
from hpcops.api.params import SubmitParams
from hpcops.cli.fast import FastCall, read_fast_call
from hpcops.errors import InvalidInput, NeedsFullPath
from hpcops.spec import load_spec_file
from hpcops.specfile import MAX_SPEC_BYTES, folder_of, spec_file_item
from hpcops.yamlio import MAX_YAML_BYTES

SPEC = "name: quick\nexperiment: e\ncommand: python train.py\n"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPCOPS_HOME", raising=False)
    monkeypatch.delenv("HPCOPS_REMOTE", raising=False)


def _fields(call: FastCall | None) -> tuple[object, ...] | None:
    return call and (call.command, call.home, call.remote, call.specs, call.as_json)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["api"], FastCall("api", None, None)),
        (["--home", "/h", "api"], FastCall("api", "/h", None)),
        (["--home=/h", "api"], FastCall("api", "/h", None)),
        (["submit", "a.yaml"], FastCall("submit", None, None, ("a.yaml",))),
        (
            ["--remote", "lab", "submit", "a.yaml", "--json", "b.yaml"],
            FastCall("submit", None, "lab", ("a.yaml", "b.yaml"), True),
        ),
        (
            ["--remote=lab", "--home", "/h", "submit", "--json", "./a.yaml"],
            FastCall("submit", "/h", "lab", ("./a.yaml",), True),
        ),
    ],
)
def test_the_forms_it_answers(argv: list[str], expected: FastCall) -> None:
    assert _fields(read_fast_call(argv)) == _fields(expected)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["--debug", "submit", "a.yaml"],
        ["--version"],
        ["ls"],
        ["api", "extra"],
        ["submit"],
        ["submit", "--json"],
        ["submit", "--allow-dirty", "a.yaml"],
        ["submit", "-h", "a.yaml"],
        ["submit", "a.yaml", "--"],
        ["submit", ""],
        ["--home"],
        ["--home", "", "api"],
        ["--remote=", "submit", "a.yaml"],
        ["-v", "submit", "a.yaml"],
    ],
)
def test_everything_else_goes_to_the_click_cli(argv: list[str]) -> None:
    assert read_fast_call(argv) is None


def test_the_environment_names_home_and_remote_as_for_click(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HPCOPS_HOME", "/env-home")
    monkeypatch.setenv("HPCOPS_REMOTE", "")  # empty is unset, as click reads it
    assert _fields(read_fast_call(["api"])) == _fields(FastCall("api", "/env-home", None))
    assert _fields(read_fast_call(["--home", "/h", "api"])) == _fields(FastCall("api", "/h", None))


# Daemon answers for submit, by what the test asks for.
ONE_RUN = {"runs": [{"id": 12, "name": "quick", "state": "QUEUED"}]}
TWO_RUNS = {
    "runs": [
        {"id": 12, "name": "quick", "state": "QUEUED"},
        {"id": 13, "name": "other", "state": "QUEUED"},
    ]
}
SWEEP = {
    "runs": [{"id": 14, "name": "grid", "state": "QUEUED", "sweep": "s2"}],
    "sweeps": [{"id": "s2", "sweep_id": 2, "n_points": 3, "runs": [14, 15, 16]}],
}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]], dict[str, Any]]]:
    """A Unix socket that answers like the daemon: `answers["submit"]` (an InvalidInput when it
    is one; a function of the params gives either), `ping` with "pong"; every request it got
    lands in `calls`."""
    home = tmp_path / "home"
    home.mkdir()
    calls: list[dict[str, Any]] = []
    answers: dict[str, Any] = {"ping": "pong"}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                message = json.loads(line)
                calls.append(message)
                result = answers[message["method"]]
                if callable(result):
                    result = result(message["params"])
                if isinstance(result, InvalidInput):
                    reply = protocol.failure(message["id"], result)
                else:
                    reply = protocol.ok(message["id"], result)
                self.wfile.write(protocol.encode(reply))

    server = socketserver.ThreadingUnixStreamServer(str(home / "hpcops.sock"), Handler)
    # A short poll: shutdown() waits for it (the default 0.5 s, per test).
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    yield home, calls, answers
    server.shutdown()
    server.server_close()


# Modules a fresh interpreter does not load to read JSON from a socket, each worth several ms of
# CPU to a process started by the thousand (issue 16): the fast entry's calls import none.
HEAVY = ("pathlib", "dataclasses", "typing", "shutil", "inspect", "subprocess")

# Runs one entry point in a fresh interpreter and prints what it imported, as the installed
# `hpcops` script would run it.
PROBE = """
import sys
preloaded = set(sys.modules)
sys.argv = ["hpcops", *{argv!r}]
from {module} import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
shape = {{name: name in sys.modules for name in ("click", "pydantic", "yaml")}}
heavy = [name for name in {heavy!r} if name in sys.modules and name not in preloaded]
print(shape | {{"heavy": heavy, "code": code}})
"""


def _run(entry: str, argv: list[str], tmp_path: Path, stdin: str = "") -> tuple[str, str, dict]:
    module = {"fast": "hpcops.cli.fast", "click": "hpcops.cli.main"}[entry]
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "no-config")}
    for name in ("HPCOPS_CONFIG", "HPCOPS_REMOTE", "HPCOPS_HOME"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, module=module, heavy=HEAVY)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    *out, shape = proc.stdout.splitlines()
    return "\n".join(out), proc.stderr, ast.literal_eval(shape)


@pytest.mark.parametrize(
    ("answer", "n_specs", "as_json"),
    [
        (ONE_RUN, 1, False),
        (ONE_RUN, 1, True),
        (TWO_RUNS, 2, False),
        (TWO_RUNS, 2, True),
        (SWEEP, 1, False),
        (SWEEP, 1, True),
    ],
    ids=["run", "run-json", "two", "two-json", "sweep", "sweep-json"],
)
def test_submit_sends_and_prints_what_the_click_command_does(
    tmp_path: Path,
    daemon: tuple[Path, list[dict[str, Any]], dict[str, Any]],
    answer: dict[str, Any],
    n_specs: int,
    as_json: bool,
) -> None:
    home, calls, answers = daemon
    answers["submit"] = answer
    specs = []
    for i in range(n_specs):
        (tmp_path / f"s{i}.yaml").write_text(SPEC + "workdir: sub\n")
        specs.append(f"s{i}.yaml")
    argv = ["--home", str(home), "submit", *specs, *(["--json"] if as_json else [])]
    fast_out, fast_err, fast = _run("fast", argv, tmp_path)
    [fast_call] = [c["params"] for c in calls]
    calls.clear()
    click_out, click_err, slow = _run("click", argv, tmp_path)
    assert (
        (fast_out, fast_err, fast["code"])
        == (click_out, click_err, slow["code"])
        == (
            fast_out,
            "",
            0,
        )
    )
    assert [c["params"] for c in calls] == [fast_call], "the click command's quick path too"
    # The file as it is, and its folder: the daemon anchors `workdir: sub` there.
    assert fast_call["specs"] == [
        {"yaml": SPEC + "workdir: sub\n", "source": name, "base_dir": str(tmp_path)}
        for name in specs
    ]
    assert fast == {"click": False, "pydantic": False, "yaml": False, "heavy": [], "code": 0}
    assert slow["click"] is True
    if not as_json:
        assert fast_out in ("12", "12\tquick\n13\tother", "queued sweep s2: 3 points (runs 14-16)")
    else:
        assert json.loads(fast_out) == json.loads(click_out)


def test_no_daemon_is_the_same_error_and_exit_code(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SPEC)
    argv = ["--home", str(tmp_path / "nobody"), "submit", "s.yaml"]
    fast_out, fast_err, fast = _run("fast", argv, tmp_path)
    click_out, click_err, slow = _run("click", argv, tmp_path)
    assert (fast_out, fast_err, fast["code"]) == (click_out, click_err, slow["code"])
    assert fast["code"] == 3 and "no hpcops daemon answers" in fast_err
    assert fast["click"] is False and fast["heavy"] == []


def test_a_spec_the_daemon_refuses_is_printed_as_the_click_command_prints_it_and_sent_once(
    tmp_path: Path, daemon: tuple[Path, list[dict[str, Any]], dict[str, Any]]
) -> None:
    home, calls, answers = daemon
    refusal = "s.yaml: invalid spec\n  resources.gpus: must be >= 0\nnothing was queued"
    answers["submit"] = InvalidInput(refusal)
    (tmp_path / "s.yaml").write_text(SPEC)
    argv = ["--home", str(home), "submit", "s.yaml"]
    fast_out, fast_err, fast = _run("fast", argv, tmp_path)
    assert len(calls) == 1, "asked once: a refusal is the answer, not a reason to ask again"
    calls.clear()
    click_out, click_err, slow = _run("click", argv, tmp_path)
    assert len(calls) == 1
    assert (fast_out, fast_err, fast["code"]) == (click_out, click_err, slow["code"])
    assert (fast_err, fast["code"]) == (f"hpcops: {refusal}\n", 2)
    assert fast["click"] is False and fast["heavy"] == []


def test_a_spec_the_daemon_hands_back_goes_the_full_path_without_asking_again(
    tmp_path: Path, daemon: tuple[Path, list[dict[str, Any]], dict[str, Any]]
) -> None:
    # The daemon sends a file it was given as it is to the full path (here, a quoted "code" key
    # the fast entry's line scan does not see): the click command then reads the spec and
    # sends it as the full path does, and never repeats the quick request.
    home, calls, answers = daemon

    def submit(params: dict[str, Any]) -> Any:
        if any("base_dir" in item for item in params["specs"]):
            return NeedsFullPath("s.yaml: a spec with code: or schedule: goes through ...")
        return ONE_RUN

    answers["submit"] = submit
    (tmp_path / "s.yaml").write_text(SPEC)
    out, err, shape = _run("fast", ["--home", str(home), "submit", "s.yaml"], tmp_path)
    assert (out, err, shape["code"], shape["click"]) == ("12", "", 0, True)
    quick, full = [c["params"]["specs"] for c in calls]
    assert "base_dir" in quick[0] and "base_dir" not in full[0]


@pytest.mark.parametrize(
    "spec",
    [
        SPEC + "code: {repo: ., commit: HEAD}\n",
        SPEC + "schedule: {cron: '0 3 * * *'}\n",
        "name: p\nsteps: {a: {spec: a.yaml}}\n",
    ],
    ids=["code", "schedule", "pipeline"],
)
def test_specs_the_daemon_cannot_take_as_they_are_go_to_the_click_command(
    tmp_path: Path, spec: str
) -> None:
    (tmp_path / "s.yaml").write_text(spec)
    # Nothing listens: the click command is what prints, whatever it says.
    _, _, shape = _run("fast", ["--home", str(tmp_path / "none"), "submit", "s.yaml"], tmp_path)
    assert shape["click"] is True
    assert shape["code"] != 0


def test_api_relays_to_the_socket_without_click(
    tmp_path: Path, daemon: tuple[Path, list[dict[str, Any]], dict[str, Any]]
) -> None:
    home, calls, _ = daemon
    request = protocol.encode(protocol.request(1, "ping", {})).decode()
    out, err, shape = _run("fast", ["--home", str(home), "api"], tmp_path, stdin=request)
    assert json.loads(out) == protocol.ok(1, "pong")
    assert [c["method"] for c in calls] == ["ping"]
    assert shape == {"click": False, "pydantic": False, "yaml": False, "heavy": [], "code": 0}, err


def test_its_size_limit_is_the_yaml_readers() -> None:
    assert MAX_SPEC_BYTES == MAX_YAML_BYTES


@pytest.mark.parametrize(
    "text",
    [
        SPEC + "workdir: sub\n",  # relative: the file's folder
        SPEC,  # none: the file's folder itself
        SPEC + "workdir: /abs/where\n",
        '{"name": "j", "experiment": "e", "command": "true", "workdir": "w"}',
    ],
    ids=["relative", "none", "absolute", "json"],
)
def test_the_daemon_reads_a_files_text_as_the_cli_reads_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    item = spec_file_item(path)
    assert item is not None
    params = SubmitParams.parse({"specs": [item]})
    assert parse_file_text(params.specs[0]) == load_spec_file(path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"name": "j", "experiment": "e", "command": "true", "code": {"repo": "."}}', "code:"),
        (SPEC + '"schedule": {cron: "0 3 * * *"}\n', "schedule:"),
        # A pipeline written by json.dumps: one line, which the client's line scan cannot read.
        ('{"name": "chain", "steps": {"a": {"spec": "a.yaml"}}}', "a pipeline"),
    ],
    ids=["code", "schedule", "pipeline"],
)
def test_the_daemon_hands_code_schedules_and_pipelines_back_to_the_full_path(
    tmp_path: Path, text: str, says: str
) -> None:
    item = SubmitParams.parse(
        {"specs": [{"yaml": text, "source": "s.yaml", "base_dir": str(tmp_path)}]}
    ).specs[0]
    with pytest.raises(NeedsFullPath, match=says):
        parse_file_text(item)


@pytest.mark.parametrize("base_dir", ["relative/dir", "/a\nb", "", "/" + "a" * 5000])
def test_a_base_dir_must_be_an_absolute_folder(base_dir: str) -> None:
    with pytest.raises(InvalidInput, match="base_dir"):
        SubmitParams.parse({"specs": [{"yaml": SPEC, "source": "s", "base_dir": base_dir}]})


@pytest.mark.parametrize(
    "text",
    [
        SPEC + "code: {repo: ., commit: HEAD}\n",
        SPEC + "schedule :\n  cron: '0 3 * * *'\n",
        "name: p\nsteps: {a: {spec: a.yaml}}\n",
        "x" * (1024 * 1024 + 1),
    ],
    ids=["code", "schedule", "steps", "too-big"],
)
def test_files_only_the_click_command_reads(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert spec_file_item(path) is None
    assert spec_file_item(tmp_path / "missing.yaml") is None
    path.write_bytes(b"name: \xff\n")
    assert spec_file_item(path) is None


def test_a_spec_from_a_pipe_is_left_unread_for_the_click_command() -> None:
    # `hpcops submit <(envsubst < t.yaml)`: a pipe can be read once, so the path that reads it
    # must be the only one that does.
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, SPEC.encode())
        os.close(write_end)
        assert spec_file_item(f"/dev/fd/{read_end}") is None
        assert os.read(read_end, 4096) == SPEC.encode(), "nothing was taken from the pipe"
    finally:
        os.close(read_end)


@pytest.mark.parametrize(
    "name",
    [
        "s.yaml",
        "./s.yaml",
        "sub/s.yaml",
        "sub//s.yaml",
        "./sub/./s.yaml",
        "sub/../s.yaml",
        "../x/s.yaml",
        "/abs/s.yaml",
        "//abs/s.yaml/",
        "/s.yaml",
    ],
)
def test_a_files_folder_is_spelled_as_pathlib_spells_it(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    expected = Path(name).absolute().parent
    if name.startswith("//"):  # POSIX leaves a leading // to the system; Linux reads it as /
        expected = Path("/" + str(expected).lstrip("/"))
    assert folder_of(name) == str(expected)
