"""Catalogs: many scenes indexed once, searched in words, on one machine or many.

:class:`Catalog` builds a catalog folder from files, folders, VRT mosaics and STAC (one GeoParquet
part per scene, incremental and resumable, spread over GPUs and nodes by Lightning or over array
jobs by shards) and searches it: the best places across every scene for a text, then heatmaps of
the best scenes from their stored embeddings. See ``docs/catalog.md``.

Names are imported on first use, so the command line can declare its flags without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "BuildSummary": "build",
    "Catalog": "api",
    "CatalogStore": "store",
    "FinalizeSummary": "finalize",
    "Scene": "sources",
    "SceneFailure": "sources",
    "catalog_options": "options",
    "finalize": "finalize",
    "resolve_shard": "distributed",
    "resolve_sources": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
