"""Packages whose names are imported on first use: ``import seamfree.tiling`` (or a light module inside it, such
as ``seamfree.tiling.grid``) must not import torch for a reader that opens a file."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any

__all__ = ["lazy_exports"]


class _LazyPackage(types.ModuleType):
    """A package module whose exported names win over its submodules of the same name (``seamfree.tiling.predict``
    is the function, as with eager imports, even after the submodule ``predict.py`` was imported)."""

    _seamfree_exports: Mapping[str, str]

    def __setattr__(self, name: str, value: Any) -> None:
        exports = self.__dict__.get("_seamfree_exports", {})
        if name in exports and isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}":
            return  # the import system binding a submodule: the export of that name is the package's attribute
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        module = self.__dict__.get("_seamfree_exports", {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        self.__dict__[name] = value  # later lookups skip this method
        return value

    def __dir__(self) -> list[str]:
        return sorted({*self.__dict__.get("_seamfree_exports", {}), *self.__dict__})


def lazy_exports(package: str, exports: Mapping[str, str]) -> None:
    """Make ``package`` (call it at the end of its ``__init__``) import each public name from the module that
    ``exports`` gives for it when first asked for."""
    module = sys.modules[package]
    module.__dict__["_seamfree_exports"] = dict(exports)
    module.__class__ = _LazyPackage
