"""Config dataclasses at the edges: command-line flags and JSON, one mechanism for both.

A config dataclass (``TrainConfig``, ``ModelConfig``, ``CodesConfig``) is the one place that
names a setting, its type, its default and its help (``field(metadata={"help": ...})``).
:func:`add_config_flags` declares ``--field-name`` flags from it; :func:`config_kwargs` reads
them back; :func:`config_from_dict` builds a config from JSON (``--model-config``, a run's
``hyper`` sections) and names unknown keys instead of raising a raw TypeError.

Types: ``int``, ``float``, ``str`` (``X | None`` too), ``tuple[str, ...]`` (comma-separated)
and ``bool``, which becomes ``--x/--no-x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any


def comma_list(value: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the form every ``--domains``-like flag takes."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _base_type(hint: Any) -> Any:
    """``X | None`` -> ``X``; other hints unchanged."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def _parse_type(hint: Any, name: str) -> Any:
    base = _base_type(hint)
    if base in (int, float, str):
        return base
    if typing.get_origin(base) is tuple:
        return comma_list
    raise TypeError(f"no flag type for field {name!r} ({hint!r})")


def _default_of(f: dataclasses.Field, defaults: Any) -> Any:
    if isinstance(defaults, Mapping):
        if f.name in defaults:
            return defaults[f.name]
    elif defaults is not None and hasattr(defaults, f.name):
        return getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Any = None,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Declare a ``--field-name`` flag for each field of the dataclass ``cls``.

    ``defaults`` (a mapping or an instance of ``cls``) replaces the class defaults;
    ``only``/``skip`` select fields (``only`` keeps its order); ``overrides`` maps a field to
    extra argparse keywords (e.g. narrower ``choices``). A field's ``metadata`` carries its
    ``help`` (required: a flag that does not say what it is fails here, at the first
    ``--help``, not in front of a user) and may carry ``choices``. The help shows each
    default but None (say what None means in the help). Returns the field names declared.
    """
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in _fields(cls)}
    names = list(only) if only is not None else list(by_name)
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    names = [n for n in names if n not in set(skip)]
    for name in names:
        f = by_name[name]
        default = _default_of(f, defaults)
        kwargs: dict[str, Any] = {"default": default, "dest": name}
        if not f.metadata.get("help"):
            raise TypeError(f"{cls.__name__}.{name} has no metadata help for its flag")
        kwargs["help"] = f.metadata["help"]
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
        if hints[name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _parse_type(hints[name], name)
        kwargs.update((overrides or {}).get(name, {}))
        action = parser.add_argument("--" + name.replace("_", "-"), **kwargs)
        # BooleanOptionalAction adds its own "(default: ...)" on some Python versions.
        if default is not None and "%(default)" not in (action.help or ""):
            shown = (",".join(default) or "''") if isinstance(default, tuple) else "%(default)s"
            action.help = f"{action.help or ''} (default: {shown})".lstrip()
    return names


def config_kwargs(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parsed values of the flags ``names`` (as returned by :func:`add_config_flags`)."""
    return {name: getattr(args, name) for name in names}


def config_from_dict(cls: type, values: Any, what: str, **fixed: Any) -> Any:
    """``cls(**values, **fixed)``, with bad input as a one-line ValueError.

    ``values`` comes from the user (JSON): it must be an object whose keys are fields of
    ``cls`` and not among ``fixed`` (the caller's own settings). ``what`` names the input in
    the message, e.g. ``"--model-config"`` or ``"hyper.finetune"``.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{what} must be a JSON object, not {values!r}")
    known = [f.name for f in _fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"{what}: unknown {cls.__name__} key(s) {unknown}; known: {', '.join(known)}"
        )
    clash = sorted(set(values) & set(fixed))
    if clash:
        raise ValueError(f"{what}: {clash} cannot be set here (given by the caller)")
    return cls(**values, **fixed)
