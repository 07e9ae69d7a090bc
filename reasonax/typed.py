"""Typed configs: frozen dataclasses are the one declaration of a job's fields (type, default, and
the comment that documents it); the ml_collections ConfigDict that config files and
--config.<path>=value flags edit is generated from them, and converted back once, at the
boundary (a recipe's build):

    c = typed.to_configdict(SFTConfig())     # default_config(): what config files start from
    run = typed.from_config(SFTConfig, c)     # build(): checked, derived fields filled in, frozen

A dataclass may define `__post_init__` to fill in derived fields (it runs on the defaults too, so
it must not reject them) and `problems(self) -> list[str]` for what the boundary rejects (e.g. a
required path); from_config gathers the problems of every nested config, each named by its path,
and raises one ValueError. Unknown fields and values of the wrong type are errors that name the
field. Depends on nothing else in reasonax.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections

T = typing.TypeVar("T")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp, value, path: str):
    """value as type tp (nested dataclasses, tuples from lists, ints as floats); TypeError naming path."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path)
            except TypeError:
                pass
        raise TypeError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise TypeError(f"{path}: expected a tuple, got {value!r}")
        elem = args[0] if args else Any
        return tuple(_convert(elem, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise TypeError(f"{path}: expected a mapping, got {value!r}")
        return {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
                for k, v in (value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value).items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{path}: expected a bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{path}: expected an int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported field type {_describe(tp)}")


def _build(cls, value, path: str):
    if isinstance(value, cls):
        return value
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise TypeError(f"{path}: expected a group of fields ({cls.__name__}), got {value!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ValueError(f"{path}: unknown field{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                         f"(fields of {cls.__name__}: {', '.join(names)})")
    return cls(**{k: _convert(hints[k], v, f"{path}.{k}") for k, v in value.items()})


def problems(obj, path: str = "config") -> list[str]:
    """The problems(self) of obj and of every config nested in it, prefixed with their paths."""
    out = [f"{path}: {p}" for p in (obj.problems() if hasattr(obj, "problems") else [])]
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out += problems(v, f"{path}.{f.name}")
    return out


def from_config(cls: type[T], config, path: str = "config") -> T:
    """The frozen cls of a ConfigDict (or dict, or a cls already): types checked, derived fields
    filled in, problems() of every level raised together as one ValueError."""
    obj = _build(cls, config, path)
    found = problems(obj, path)
    if found:
        raise ValueError("invalid config:\n  " + "\n  ".join(found))
    return obj


def _field_value(tp, value):
    if dataclasses.is_dataclass(value):
        return to_configdict(value)
    if isinstance(value, dict):
        return ml_collections.ConfigDict(value)
    if value is None:  # an optional field: a typed reference, so --config.x=3 can set it
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and inner[0] in (int, float, str, bool):
            return ml_collections.FieldReference(None, field_type=inner[0])
    return value


def to_configdict(obj) -> ml_collections.ConfigDict:
    """The ConfigDict of a config dataclass (nested groups as ConfigDicts): what files and flags edit."""
    hints = _hints(type(obj))
    return ml_collections.ConfigDict({f.name: _field_value(hints[f.name], getattr(obj, f.name))
                                      for f in dataclasses.fields(obj) if f.init})


def to_dict(obj) -> dict:
    """Plain nested dict (tuples as lists), for JSON."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(obj))
