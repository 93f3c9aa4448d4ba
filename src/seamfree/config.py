"""YAML → frozen-dataclass machinery shared by the training and study configurations (a leaf module).

A configuration is a tree of frozen dataclasses. :func:`from_mapping` builds one from nested mappings (lists
become tuples, unknown keys are rejected with a did-you-mean), :func:`read_mapping` reads the mapping of a YAML
file, :func:`apply_overrides` applies ``section.key=value`` overrides, and :func:`config_to_dict` gives the plain
dict back for YAML/JSON.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from seamfree._version import REMOVED_IN
from seamfree.errors import ConfigError

__all__ = ["apply_overrides", "apply_renamed", "config_to_dict", "deprecated_alias", "did_you_mean", "from_mapping",
           "read_mapping"]


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest of ``known`` to ``name``, or ``""``.

    Examples
    --------
    >>> did_you_mean("batchrenrom", ["batch", "batchrenorm"])
    " (did you mean 'batchrenorm'?)"
    """
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(annotation, str(annotation))


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` (dataclasses, tuples, scalars); raise ConfigError if it can't."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of its options, got {value!r}")
        return from_mapping(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        if len(options) == 1:
            return _convert(value, options[0], where)
        for option in options:  # e.g. Literal["auto"] | float: the first that takes the value
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {' or '.join(_kind(o) for o in options)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(annotation)
        items = value if isinstance(value, list | tuple) else [value]
        inner = args[0] if args else Any
        return tuple(_convert(v, inner, where) for v in items)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(f"{where} must be one of {typing.get_args(annotation)}, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (annotation is int and value != int(value)):
            raise ConfigError(f"{where} must be a number ({annotation.__name__}), got {value!r}")
        return annotation(value)
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def from_mapping(cls: Any, values: dict[str, Any], where: str = "") -> Any:
    """Return the frozen dataclass ``cls`` built from ``values`` (nested mappings, lists → tuples).

    Unknown keys raise ConfigError with a did-you-mean; ``where`` prefixes key names in messages.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown configuration key {where + '.' if where else ''}{key}"
                              f"{did_you_mean(key, names)}; known keys: {', '.join(names)}")
    kwargs = {key: _convert(value, hints[key], f"{where}.{key}" if where else key) for key, value in values.items()}
    return cls(**kwargs)


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``values[a][b] = value`` for ``dotted`` = "a.b", creating sections as needed."""
    parts = dotted.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
    node[parts[-1]] = value


def read_mapping(path: str | Path, *, what: str, example: str, sections: str) -> dict[str, Any]:
    """Return the mapping held by the YAML file ``path``; ConfigError naming ``example`` if it is missing or not one."""
    import yaml

    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{what} {file} does not exist; see {example} for one")
    loaded = yaml.safe_load(file.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{file} must hold a mapping of sections ({sections}), got {type(loaded).__name__}")
    return loaded


def apply_overrides(values: dict[str, Any], overrides: list[str] | None, *, example: str) -> None:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to ``values`` in place."""
    import yaml

    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like section.key=value, e.g. {example}")
        key, _, text = override.partition("=")
        _set_dotted(values, key.strip(), yaml.safe_load(text))



def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a plain dict (lists instead of tuples) of a configuration dataclass, ready for YAML/JSON."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return typing.cast(dict[str, Any], plain(dataclasses.asdict(config)))


def apply_renamed(instance: Any, old: str, new: str) -> None:
    """Move the deprecated field ``old`` of a frozen dataclass to ``new``, with a DeprecationWarning.

    The old name stays a constructor keyword for one release; after construction it always holds None, so
    :func:`dataclasses.replace` and :func:`dataclasses.asdict` never see it set.
    """
    value = getattr(instance, old)
    if value is None:
        return
    warnings.warn(f"{type(instance).__name__}({old}=...) is deprecated and will be removed in seamfree "
                  f"{REMOVED_IN}; use {new}=...",
                  DeprecationWarning, stacklevel=4)
    object.__setattr__(instance, new, value)
    object.__setattr__(instance, old, None)


def deprecated_alias(old: str, new: str) -> property:
    """Return a read-only property ``old`` that warns and gives the attribute ``new`` (a renamed field)."""
    def getter(self: Any) -> Any:
        warnings.warn(f"{type(self).__name__}.{old} is deprecated and will be removed in seamfree {REMOVED_IN}; "
                      f"use .{new}",
                      DeprecationWarning, stacklevel=2)
        return getattr(self, new)
    return property(getter, doc=f"Deprecated name of ``{new}``.")
