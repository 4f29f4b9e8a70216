"""Config errors in an operator's words: the one line a refused file gets.

The daemon exits 78 on a bad file and systemd will not restart it, so that
line must name the file, the dotted key and what is wrong without msgspec's
jargon (``Expected `int` >= 1 - at `$.upserter.interval_s```). ``translate``
reads the expected type and its bounds from the schema itself, so the wording
follows the schema in ``dealsd.config.schema`` with nothing to keep in step.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
from msgspec import Meta


class ConfigError(Exception):
    """A config the daemon refuses: ``str()`` is "<path>: <key>: <what is wrong>"."""

    def __init__(self, path: str | os.PathLike[str], key: str | None, message: str) -> None:
        self.path = str(path)
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.key:
            return f"{self.path}: {self.key}: {self.message}"
        return f"{self.path}: {self.message}"


_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "a list",
}


def _unwrap(tp: Any) -> tuple[Any, list[Meta]]:
    """The bare type under ``Annotated`` and ``X | None``, and its constraints."""
    metas: list[Meta] = []
    if get_origin(tp) is Annotated:
        metas = [m for m in tp.__metadata__ if isinstance(m, Meta)]
        tp = get_args(tp)[0]
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return _unwrap(args[0])
    return tp, metas


_INDEX = re.compile(r"^(.*)\[(\d+)\]$")  # selection[0]: an array of tables' entry


def _field_type(root: type, parts: list[str]) -> Any:
    """The declared type at a dotted path, or None when the path leaves the schema."""
    tp: Any = root
    for part in parts:
        indexed = _INDEX.match(part)
        if indexed:
            tp = _field_type(tp, [indexed.group(1)])
            tp = get_args(_unwrap(tp)[0])[0] if get_origin(_unwrap(tp)[0]) is list else None
            continue
        tp, _ = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            tp = typing.get_type_hints(tp, include_extras=True).get(part)
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    return tp


def _describe(tp: Any) -> str | None:
    bare, metas = _unwrap(tp)
    if get_origin(bare) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(bare))
    if get_origin(bare) is list:
        item = _unwrap(get_args(bare)[0])[0]
        if isinstance(item, type) and issubclass(item, msgspec.Struct):
            return "an array of tables"
    if (isinstance(bare, type) and issubclass(bare, msgspec.Struct)) or get_origin(bare) is dict:
        return "a table"
    if get_origin(bare) is list:
        return "a list"
    word = _WORDS.get(getattr(bare, "__name__", ""))
    if word is None:
        return None
    for m in metas:
        if m.description:
            return m.description
        if m.ge is not None and m.le is not None:
            return f"{word} from {m.ge:g} to {m.le:g}"
        bounds = [
            f"{op} {v:g}" for op, v in ((">=", m.ge), (">", m.gt), ("<=", m.le)) if v is not None
        ]
        if bounds:
            return f"{word} {' and '.join(bounds)}"
        if m.min_length:
            return f"a non-empty {word.removeprefix('a ')}"
    return word


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _lookup(raw: Any, parts: list[str]) -> Any:
    for part in parts:
        indexed = _INDEX.match(part)
        name, index = (indexed.group(1), int(indexed.group(2))) if indexed else (part, None)
        raw = raw.get(name) if isinstance(raw, dict) else None
        if index is not None:
            raw = raw[index] if isinstance(raw, list) and index < len(raw) else None
    return raw


def translate(
    path: Path, exc: msgspec.ValidationError, raw: dict[str, Any], root: type
) -> ConfigError:
    """msgspec's "Expected `int` >= 1 - at `$.upserter.interval_s`", in an operator's words."""
    text = str(exc)
    what, _, where = text.partition(" - at `$")
    where = where.rstrip("`")
    in_dict = where.endswith("[...]")
    parts = [p for p in where.removesuffix("[...]").split(".") if p]
    if in_dict:
        # A dict entry: msgspec does not say which one, so find the entry that fails.
        table, dict_type = _lookup(raw, parts), _field_type(root, parts)
        for k, v in table.items() if isinstance(table, dict) else ():
            try:
                msgspec.convert({k: v}, dict_type)
            except msgspec.ValidationError:
                parts.append(str(k))
                break
    unknown = re.match(r"Object contains unknown field `(.+)`", what)
    if unknown:
        name = unknown.group(1)
        known = list(getattr(_unwrap(_field_type(root, parts))[0], "__struct_fields__", ()))
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        return ConfigError(path, ".".join([*parts, name]), f"unknown key (typo?){hint}")
    required = re.match(r"Object missing required field `(.+)`", what)
    if required:
        return ConfigError(path, ".".join([*parts, required.group(1)]), "missing (required)")
    expected = _describe(_field_type(root, parts))
    key = ".".join(parts) or None
    if expected is None:
        return ConfigError(path, key, what)
    return ConfigError(path, key, f"expected {expected}, got {_show(_lookup(raw, parts))}")
