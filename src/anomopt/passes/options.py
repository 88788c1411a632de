"""Declared pass options: each pass names its options in a dataclass (defaults and docs), as MLIR passes
declare theirs, and every option a pipeline file or ``optimize(pass_options=...)`` gives is checked against
it. An unknown key or a value of the wrong type is a :class:`~anomopt.errors.ConfigError` that names the
pass, the key and the known keys.

A pass declares::

    @dataclass
    class Options:
        method: str = option("max", "range estimator: max | percentile | entropy | mse")
        percentile: float = option(99.99, "the percentile when method = 'percentile'")
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, Union

from anomopt.errors import ConfigError


def option(default: Any, doc: str) -> Any:
    """A dataclass field with a default and a one-line description (a list or dict default is copied per
    pass instance)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass
class NoOptions:
    """The options of a pass that takes none."""


def option_docs(options_cls: type) -> dict[str, tuple[str, Any, str]]:
    """``{name: (type, default, doc)}`` of a pass's options, for help texts and docs."""
    hints = typing.get_type_hints(options_cls)
    out = {}
    for f in fields(options_cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = (_type_name(hints[f.name]), default, str(f.metadata.get("doc", "")))
    return out


def parse_options(pass_name: str, options_cls: type, given: dict[str, Any], extra_keys: tuple[str, ...] = ()) -> Any:
    """An ``options_cls`` instance from ``given``; raises :class:`ConfigError` on an unknown key (naming the
    known ones, with ``extra_keys`` such as the tolerance keys) or a value of the wrong type."""
    hints = typing.get_type_hints(options_cls)
    known = [f.name for f in fields(options_cls)]
    values = {}
    for key, value in given.items():
        if key not in hints or key not in known:
            names = ", ".join([*known, *extra_keys]) or "none"
            raise ConfigError(f"pass {pass_name!r} has no option {key!r}; known options: {names}")
        ok, coerced = _check(value, hints[key])
        if not ok:
            raise ConfigError(
                f"pass {pass_name!r}: option {key!r} must be {_type_name(hints[key])}, not {value!r}"
            )
        values[key] = coerced
    return options_cls(**values)


def _check(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits the type ``hint``, and the value converted (an int where a float is asked)."""
    if hint is Any:
        return True, value
    if hint is type(None):
        return value is None, value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        for arg in args:
            ok, coerced = _check(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin is Literal:
        return value in args, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        item = args[0] if args else Any
        out = []
        for v in value:
            ok, coerced = _check(v, item)
            if not ok:
                return False, value
            out.append(coerced)
        return True, out
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False, value
        key_t, val_t = args if args else (Any, Any)
        out_d = {}
        for k, v in value.items():
            ok_k, ck = _check(k, key_t)
            ok_v, cv = _check(v, val_t)
            if not (ok_k and ok_v):
                return False, value
            out_d[ck] = cv
        return True, out_d
    return isinstance(value, hint), value  # pragma: no cover - option types are the ones above


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_PLURAL.get(args[0], 'values')}" if args else "a list"
    if origin is dict:
        return f"a table of {_PLURAL.get(args[0], 'keys')} to {_PLURAL.get(args[1], 'values')}" if args else "a table"
    return _SINGULAR.get(hint, getattr(hint, "__name__", str(hint)))


_SINGULAR = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
