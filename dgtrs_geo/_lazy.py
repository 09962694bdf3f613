"""Lazy package exports: a public name is imported from its submodule on first use.

So the command line can declare its flags and read its options without importing torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` (PEP 562) that import names on first use.

    Use in a package's ``__init__``: ``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)``.

    Args:
        package: The package's ``__name__``.
        exports: Public name -> the submodule (relative to *package*) that defines it.

    Returns:
        ``(__getattr__, __dir__)``: the first imports the name's submodule and caches the
        value in the package, so later look-ups skip it; the second lists the names too.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
