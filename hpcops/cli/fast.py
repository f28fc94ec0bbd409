"""`hpcops`'s entry point: the two calls a lab makes by the thousand answered without click,
every other call by the click CLI (`cli/main.py`).

    hpcops [--home DIR] api                          every laptop call over SSH runs this on
                                                     the login node
    hpcops [--home DIR] [--remote NAME] submit [--json] SPEC...
                                                     a script queueing a hundred runs; a
                                                     laptop's submit

Each pays its start-up on every call, and importing click and every command's module was most
of it (issue 16: `hpcops api` took 0.25 s to start over an open master connection, a plain
submit on the login node 0.3 s of CPU). `main` answers here only the forms it reads completely:
those words, in that order, with specs the daemon can take as they are (no code to ship, no
schedule: block to mention, no pipeline). Their text goes as it is, with the file's folder, and
the daemon reads and anchors it (`api.handlers.queue.parse_file_text`): this process imports no
YAML parser and no spec model. Anything else -- another command or option, --debug, --help, a
spec only the full path can queue -- goes to the click CLI untouched, which then says what it
always says (and does not ask the daemon the same again: `cli.queued`). A spec the daemon
refuses is printed here, in the words the full path uses, as the daemon gives them.
What is printed and exited is the click command's: the same client (`client.connect`), the same
words (`cli.queued`), the same exit codes (`errors.HpcopsError.exit_code`).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# What this module and the ones a submit reaches import at run time is os, sys, re, json and
# socket, all but the last loaded by any Python that reads JSON; tests/unit/test_cli_fast.py
# keeps it so. Each of pathlib, dataclasses and typing cost a fresh process several ms of CPU:
# together 25 ms of a login-node submit's 72 ms (hpcops/home.py: how annotations do without).


class FastCall:
    """One call the fast entry answers, as text: the paths go to the daemon as they were typed."""

    __slots__ = ("as_json", "command", "home", "remote", "specs")

    def __init__(
        self,
        command: str,  # "api" | "submit"
        home: str | None,
        remote: str | None,
        specs: tuple[str, ...] = (),
        as_json: bool = False,
    ) -> None:
        self.command = command
        self.home = home
        self.remote = remote
        self.specs = specs
        self.as_json = as_json

    def __repr__(self) -> str:
        fields = (self.command, self.home, self.remote, self.specs, self.as_json)
        return f"FastCall{fields!r}"


def _env(name: str) -> str | None:
    return os.environ.get(name) or None  # as click reads an envvar: empty is unset


def read_fast_call(argv: list[str]) -> FastCall | None:
    """The call, when `argv` is one of the forms above and nothing else; None otherwise."""
    home, remote = _env("HPCOPS_HOME"), _env("HPCOPS_REMOTE")
    words = list(argv)
    while words and words[0].startswith("--"):
        option, eq, value = words[0].partition("=")
        if option not in ("--home", "--remote"):
            return None
        if not eq:
            if len(words) < 2:
                return None
            value = words[1]
            words = words[1:]
        words = words[1:]
        if not value:
            return None  # click would refuse it, in its words
        if option == "--home":
            home = value
        else:
            remote = value
    if not words:
        return None
    command, rest = words[0], words[1:]
    if command == "api" and not rest:
        return FastCall("api", home, remote)
    if command != "submit":
        return None
    as_json = "--json" in rest
    specs = [word for word in rest if word != "--json"]
    if not specs or any(word.startswith("-") or not word for word in specs):
        return None
    return FastCall("submit", home, remote, tuple(specs), as_json)


def _api(call: FastCall) -> int:
    from hpcops.client.relay import relay
    from hpcops.home import default_home_text, socket_in

    relay(socket_in(call.home or default_home_text()), sys.stdin.buffer, sys.stdout.buffer)
    return 0


def _submit(call: FastCall) -> int | None:
    from hpcops.cli.queued import queued_lines, quick_submit
    from hpcops.client.connect import drop_route, open_routed, remember_route
    from hpcops.errors import HpcopsError

    def send(items: list[dict[str, str]]) -> Any:
        client, key = open_routed(call.home, call.remote)
        try:
            answer = client.call("submit", specs=items)
            remember_route(key, client)
            return answer
        except HpcopsError as exc:
            drop_route(key, client, exc)
            raise
        finally:
            client.close()

    try:
        queued = quick_submit(call.specs, send)
    except HpcopsError as exc:
        print(f"hpcops: {exc}", file=sys.stderr)
        return exc.exit_code
    if queued is None:
        return None  # a spec needs the full path: the click command takes it, asking nothing twice
    print("\n".join(queued_lines(queued, call.as_json)))
    return 0


def answer(argv: list[str]) -> int | None:
    """The exit code of a call answered here; None: the click CLI answers it."""
    call = read_fast_call(argv)
    if call is None:
        return None
    if call.command == "api":
        return _api(call)
    return _submit(call)


def main() -> None:
    code = answer(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from hpcops.cli.main import main as click_main

    click_main()
