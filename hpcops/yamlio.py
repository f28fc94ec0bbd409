"""hpcops' one YAML reader and writer: specs, the daemon's config and recorded specs all go
through here.

Reading is a pipeline in which each step guards the next:

    bytes ─► size limit ─► UTF-8 ─► control characters ─► YAML events ─► plain data
                                                          (no anchors,    (str, int, float,
                                                           aliases or      bool, None, list,
                                                           tags)           dict; no duplicate
                                                                           keys)

Every reason to refuse a document becomes a `FieldProblem(location, message)`, raised together
in one `YamlProblems`; the caller turns them into its own error (SpecError, ConfigError, ...).
Working on parser events means an alias is refused before anything is built from it: the
"billion laughs" document is a few hundred bytes of nested aliases that PyYAML's safe_load
expands to gigabytes.

Plain scalars are read with the YAML 1.2 core schema, not PyYAML's YAML 1.1 rules, because 1.1
quietly turns common values into something else: `time: 1:30:00` would be the base-60 integer
5400 (that is, 5400 minutes), `partition: on` the boolean true, `tag: 2024-01-01` a date and
`nodes: 010` the octal 8. Here they are the strings "1:30:00", "on", "2024-01-01" and the integer
10. Only `true`/`false` are booleans and only `null`, `~` or nothing is null.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import yaml

from hpcops.describe import describe_char, describe_value
from hpcops.errors import FieldProblem, InvalidInput, SpecError

__all__ = [
    "CONFIG",
    "MAX_PROBLEMS",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "SPEC",
    "Document",
    "YamlProblems",
    "dotted",
    "dump_yaml",
    "read_bounded",
    "read_yaml",
    "too_big",
]

MAX_YAML_BYTES: Final = 1024 * 1024
MAX_YAML_DEPTH: Final = 32
MAX_PROBLEMS: Final = 50


@dataclass(frozen=True)
class Document:
    """What kind of document is read, as its messages name it."""

    what: str  # "spec": "a spec file holds one document"
    depth_hint: str  # after "nesting deeper than 32 levels at ...; "
    size_hint: str  # after "the limit is 1048576 bytes (1 MiB). "


SPEC: Final = Document(
    "spec", "a spec needs three at most", "Keep data and long scripts in files the command reads"
)
CONFIG: Final = Document(
    "config", "a config needs four at most", "A config is a page of settings, not data"
)


class YamlProblems(InvalidInput):
    """Why a document was refused: one or more problems, each at a dotted location."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__("; ".join(f"{p.location or '-'}: {p.message}" for p in problems))
        self.problems = problems

    @classmethod
    def one(cls, message: str, location: str = "") -> YamlProblems:
        return cls([FieldProblem(location, message)])


_SIMPLE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def dotted(loc: tuple[int | str, ...], dict_fields: frozenset[str] = frozenset()) -> str:
    """A location as people write it: `resources.mem`, `extra_directives[2]`, `env['a b']`.

    An integer is a list index, except right after one of `dict_fields` (a mapping whose keys
    pydantic may report as integers).
    """
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and not (i > 0 and loc[i - 1] in dict_fields):
            text += f"[{part}]"
        elif isinstance(part, str) and _SIMPLE_KEY_RE.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


# ─── YAML 1.2 core schema for plain scalars ────────────────────────────────────────────────────

_NULL_RE = re.compile(r"~|null|Null|NULL|")
_BOOL: Final = {s: s[0] in "tT" for s in ("true", "True", "TRUE", "false", "False", "FALSE")}
_INT_RE = re.compile(r"[-+]?[0-9]{1,64}")
_FLOAT_RE = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)


def _plain_scalar(text: str) -> str | int | float | bool | None:
    if _NULL_RE.fullmatch(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        # YAML writes infinity and not-a-number as .inf and .nan; Python reads inf and nan.
        special = text.lstrip("+-").lower() in {".inf", ".nan"}
        return float(text.replace(".", "") if special else text)
    return text


# ─── events to plain data ──────────────────────────────────────────────────────────────────────

_YAML_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)


class _Mark(Protocol):
    line: int
    column: int


def _where(mark: _Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


class _Refused(InvalidInput):
    """The YAML uses a feature a document may not; stops reading at once."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.problem = FieldProblem(dotted(loc), message)


@dataclass
class _Frame:
    path: tuple[int | str, ...]
    value: dict[str, object] | list[object]
    key: str | None = None  # a mapping's key waiting for its value
    key_line: dict[str, int] = field(default_factory=dict)
    bad_key: bool = False  # the pending key was refused; drop the value that follows it
    as_key: bool = False  # this collection is itself a mapping key (refused)


class _PlainDataBuilder:
    """Turns parser events into plain Python data, refusing what a document must not contain.

    Works on events so that an alias is refused before anything is built from it, and so that
    duplicate keys and non-string keys are reported with the path they are at.
    """

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.stack: list[_Frame] = []
        self.root: object = None
        self.documents = 0
        self.problems: list[FieldProblem] = []

    def child_path(self) -> tuple[int | str, ...]:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.value, list):
            return (*top.path, len(top.value))
        return (*top.path, top.key) if top.key is not None else top.path

    def feed(self, event: yaml.Event) -> None:
        what = self.doc.what
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise _Refused(
                    (),
                    f"a second YAML document starts at {_where(event.start_mark)}; a {what} file "
                    "holds one document (remove the extra '---')",
                )
            return
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            sign = "*" if kind == "alias" else "&"
            raise _Refused(
                self.child_path(),
                f"YAML {kind} '{sign}{event.anchor}' at {_where(event.start_mark)}: anchors and "
                f"aliases are not allowed in a {what}; write each value out in full",
            )
        tag = getattr(event, "tag", None)
        if isinstance(event, yaml.ScalarEvent | yaml.CollectionStartEvent) and tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise _Refused(
                self.child_path(),
                f"YAML tag '{shown}' at {_where(event.start_mark)}: tags are not allowed in a "
                f"{what}; write plain values (quote a string if YAML would read it as something "
                "else)",
            )
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            if len(self.stack) >= MAX_YAML_DEPTH:
                raise _Refused(
                    self.child_path()[:2],
                    f"nesting deeper than {MAX_YAML_DEPTH} levels at "
                    f"{_where(event.start_mark)}; {self.doc.depth_hint}",
                )
            as_key = bool(self.stack) and self._expects_key()
            container: dict[str, object] | list[object] = (
                {} if isinstance(event, yaml.MappingStartEvent) else []
            )
            self.stack.append(_Frame(self.child_path(), container, as_key=as_key))
            if as_key:
                where = _where(event.start_mark)
                message = f"a mapping key at {where} is a list or mapping; keys must be strings"
                self.problem(self.stack[-1].path, message)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            frame = self.stack.pop()
            if frame.as_key:
                self.stack[-1].bad_key = True  # drop the value that goes with the refused key
            else:
                self.add(frame.value, event)
        elif isinstance(event, yaml.ScalarEvent):
            plain = event.implicit[0]
            value = _plain_scalar(event.value) if plain else event.value
            self.add(value, event)

    def _expects_key(self) -> bool:
        top = self.stack[-1]
        return isinstance(top.value, dict) and top.key is None and not top.bad_key

    def add(self, value: object, event: yaml.Event) -> None:
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
            return
        if top.bad_key:  # the value of a refused key
            top.bad_key = False
            return
        if top.key is None:  # this scalar is a key
            line = event.start_mark.line + 1 if event.start_mark else 0
            if not isinstance(value, str):
                top.bad_key = True
                shown = "null" if value is None else str(value).lower()
                self.problem(
                    top.path,
                    f"the key {shown} at line {line} is read as {describe_value(value)}; keys "
                    f"must be strings: quote it, '{shown}'",
                )
                return
            if value in top.key_line:
                top.bad_key = True
                self.problem(
                    (*top.path, value),
                    f"duplicate key {value!r} (lines {top.key_line[value]} and {line}); YAML "
                    "would silently keep only the last value: remove one",
                )
                return
            top.key, top.key_line[value] = value, line
            return
        top.value[top.key] = value
        top.key = None

    def problem(self, loc: tuple[int | str, ...], message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(FieldProblem(dotted(loc), message))


def _yaml_problem(exc: yaml.YAMLError, text: str) -> FieldProblem:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return FieldProblem("", f"not valid YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    message = f"not valid YAML at {_where(mark)}: {exc.problem or exc.context or 'unreadable'}"
    if exc.context and exc.problem:
        message += f" ({exc.context})"
    if mark is not None:
        lines = text.splitlines()
        line = lines[mark.line] if mark.line < len(lines) else ""
        if "\t" in line[: mark.column + 1]:
            message += "; YAML indents with spaces, not tabs"
    return FieldProblem("", message)


# ─── bytes to text ─────────────────────────────────────────────────────────────────────────────

# In the raw file: tab, LF and CR are YAML's own; everything else is refused before YAML sees it.
_FILE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


def too_big(size: int, doc: Document = SPEC, more: str = "") -> str:
    return (
        f"the {doc.what} is {more}{size} bytes; the limit is {MAX_YAML_BYTES} bytes (1 MiB). "
        f"{doc.size_hint}"
    )


def _decode(data: bytes | str, doc: Document) -> str:
    if isinstance(data, str):
        if len(data) > MAX_YAML_BYTES:  # each character is at least one byte
            raise YamlProblems.one(too_big(len(data.encode("utf-8", "surrogatepass")), doc))
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise YamlProblems.one(
                f"the text holds an unpaired surrogate at character {exc.start}; not Unicode"
            ) from None
    if len(data) > MAX_YAML_BYTES:
        raise YamlProblems.one(too_big(len(data), doc))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlProblems.one(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            f"({exc.reason}); a {doc.what} is a UTF-8 YAML file, is this a binary file?"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write


def _control_problem(text: str, doc: Document) -> str | None:
    bad = _FILE_CONTROL_RE.search(text)
    if bad is None:
        return None
    line = text.count("\n", 0, bad.start()) + 1
    column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
    offset = len(text[: bad.start()].encode("utf-8"))
    return (
        f"{describe_char(bad.group())} at line {line}, column {column} (byte offset {offset}); "
        f"a {doc.what} is a text file, and control characters have no place in one"
    )


def read_yaml(data: bytes | str, doc: Document = SPEC) -> Any:
    """Plain data (str, int, float, bool, None, list, dict) from one YAML document, or None for
    a stream without one (empty, or only comments). Raises YamlProblems, and only that, for
    anything a document may not be: too big, not UTF-8, control characters, not YAML, anchors,
    aliases, tags, duplicate or non-string keys, nesting deeper than MAX_YAML_DEPTH.
    """
    text = _decode(data, doc)
    bad = _control_problem(text, doc)
    if bad is not None:
        raise YamlProblems.one(bad)
    builder = _PlainDataBuilder(doc)
    try:
        events: Iterator[yaml.Event] = yaml.parse(text, Loader=_YAML_LOADER)
        for event in events:
            builder.feed(event)
    except _Refused as exc:
        raise YamlProblems([exc.problem]) from None
    except yaml.YAMLError as exc:
        raise YamlProblems([_yaml_problem(exc, text)]) from None
    if builder.problems:
        raise YamlProblems(builder.problems)
    return builder.root if builder.documents else None


def read_bounded(path: str | Path, doc: Document = SPEC) -> bytes:
    """A file's bytes, reading at most MAX_YAML_BYTES + 1 so a huge file costs no memory.

    YamlProblems if it is bigger; OSError as open() raises it.
    """
    with Path(path).open("rb") as f:
        data = f.read(MAX_YAML_BYTES + 1)
        size = os.fstat(f.fileno()).st_size
    if len(data) > MAX_YAML_BYTES:  # a pipe or device reports no size: say "more than"
        shown = (
            too_big(size, doc) if size > MAX_YAML_BYTES else too_big(len(data), doc, "more than ")
        )
        raise YamlProblems.one(shown)
    return data


def read_document(path: str | Path, doc: Document, what: str) -> bytes:
    """A spec's or a pipeline's file, bounded as read_bounded reads it; any failure is the
    SpecError a user sees ("cannot read the {what}: ..."), naming the file."""
    try:
        return read_bounded(path, doc)
    except OSError as exc:
        problem = FieldProblem("", f"cannot read the {what}: {exc.strerror or exc}")
        raise SpecError(os.fspath(path), [problem]) from None
    except YamlProblems as exc:
        raise SpecError(os.fspath(path), exc.problems) from None


# ─── canonical YAML ────────────────────────────────────────────────────────────────────────────

# libyaml's emitter when PyYAML has it (about 5x faster); resolvers and representers stay ours.
_DUMPER_BASE: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _CanonicalDumper(_DUMPER_BASE):  # type: ignore[valid-type,misc]
    """Quotes every string that our reader, or a YAML 1.1 reader, would take for non-text."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012  # its own table, not the shared one


for _tag, _regexp in (
    ("tag:yaml.org,2002:null", _NULL_RE),
    ("tag:yaml.org,2002:bool", re.compile("|".join(_BOOL))),
    ("tag:yaml.org,2002:int", _INT_RE),
    ("tag:yaml.org,2002:float", _FLOAT_RE),
):
    _CanonicalDumper.add_implicit_resolver(
        _tag, re.compile(f"^(?:{_regexp.pattern})$"), [*"~nNtTfF-+0123456789.", ""]
    )
for _first, _resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        _CanonicalDumper.add_implicit_resolver(_tag, _regexp, [_first])


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CanonicalDumper.add_representer(str, _represent_str)


def dump_yaml(data: object) -> str:
    """Plain data as block-style YAML that read_yaml (and a YAML 1.1 reader) reads back equal:
    keys in the given order, every string that either reader would take for another type quoted,
    multi-line strings as literal blocks."""
    return yaml.dump(
        data,
        Dumper=_CanonicalDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1_000_000,
    )
