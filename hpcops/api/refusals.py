"""A refused request's message in our words: the field's `Says` sentence, found by walking the
request model along pydantic's error path (hpcops/api/params.py's models carry them)."""

from __future__ import annotations

from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

_MAX_SHOWN = 120  # characters of a refused value quoted back in the message


@dataclass(frozen=True)
class Says:
    """The refusal for a field, in our words: `{path}` is where (`specs[0].yaml`), `{value!r}`
    what came (None when the key is missing)."""

    template: str


def refusal(model: type[BaseModel], error: ErrorDetails) -> str:
    """The message for pydantic's first error: a validator's own words, else the `Says` of the
    deepest field on the error's path, else pydantic's words with the path."""
    loc = error["loc"]
    path = _path(loc)
    if error["type"] == "hpcops":
        return error["msg"]
    if error["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        known = ", ".join(_keys(parent)) if parent is not None else ""
        where = f"params.{_path(loc[:-1])}" if loc[:-1] else "params"
        return f"{where}: unknown key {loc[-1]!r}; known: {known or 'none'}"
    value = None if error["type"] == "missing" else error.get("input")
    says = _says_at(model, loc)
    if says is None:
        return f"params.{path}: {error['msg']}"
    return says.template.replace("{path}", path).replace("{value!r}", shown(value))


def shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int over Python's digit limit for str()
        return "a number too large to show"
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _says_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> Says | None:
    """The `Says` of the deepest field or list item on `loc` that has one."""
    found: Says | None = None
    kind: Any = model
    for part in loc:
        if isinstance(part, str):
            info = _field(_model_in(kind), part)
            if info is None:  # pydantic's own step (a union member's name): stop here
                break
            kind = info.annotation
            found = _says_in(info.metadata) or found
        else:
            kind = _item_of(kind)
        found = _says_in(_metadata(kind)) or found
    return found


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    kind: Any = model
    for part in loc:
        if isinstance(part, str):
            info = _field(_model_in(kind), part)
            if info is None:
                return None
            kind = info.annotation
        else:
            kind = _item_of(kind)
    return _model_in(kind)


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a model takes, as a request spells them."""
    return [info.alias or name for name, info in model.model_fields.items()]


def _field(model: type[BaseModel] | None, key: str) -> FieldInfo | None:
    if model is None:
        return None
    for name, info in model.model_fields.items():
        if key == (info.alias or name):
            return info
    return None


def _unwrapped(kind: Any) -> list[Any]:
    """The types a field's annotation may hold: Annotated and Optional taken apart."""
    if get_origin(kind) is Annotated:
        return _unwrapped(get_args(kind)[0])
    if get_origin(kind) in (Union, UnionType):
        return [t for arg in get_args(kind) if arg is not NoneType for t in _unwrapped(arg)]
    return [kind]


def _metadata(kind: Any) -> tuple[Any, ...]:
    if get_origin(kind) is Annotated:
        return tuple(kind.__metadata__)
    if get_origin(kind) in (Union, UnionType):
        return tuple(m for arg in get_args(kind) for m in _metadata(arg))
    return ()


def _says_in(metadata: Any) -> Says | None:
    return next((m for m in metadata if isinstance(m, Says)), None)


def _model_in(kind: Any) -> type[BaseModel] | None:
    for option in _unwrapped(kind):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def _item_of(kind: Any) -> Any:
    for option in _unwrapped(kind):
        if get_origin(option) is list and get_args(option):
            return get_args(option)[0]
    return None
