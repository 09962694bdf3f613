"""Catalogs: many scenes indexed once, searched in words, on one machine or many.

:class:`Catalog` builds a catalog folder from files, folders, VRT mosaics and STAC (one GeoParquet
part per scene, incremental and resumable, spread over GPUs and nodes by Lightning or over array
jobs by shards) and searches it: the best places across every scene for a text, then heatmaps of
the best scenes from their stored embeddings. See ``docs/catalog.md``.

Names are imported on first use, so the command line can declare its flags without torch.
"""

from __future__ import annotations

from .._lazy import lazy_exports

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "BuildSummary": "build",
    "Catalog": "api",
    "CatalogStore": "store",
    "FinalizeSummary": "finalize",
    "PruneSummary": "prune",
    "Scene": "sources",
    "SceneFailure": "sources",
    "catalog_options": "options",
    "finalize": "finalize",
    "prune": "prune",
    "resolve_shard": "distributed",
    "resolve_sources": "sources",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
