"""The catalog door for Python: :class:`Catalog` (build, finalize, prune, open, search)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from ..errors import InputError, ModelError
from ..localization.encode import encode_texts
from ..localization.options import LocalizationOptions
from ..localization.session import resolve_model
from .build import BuildSummary, build_catalog
from .finalize import FinalizeSummary, finalize
from .prune import PruneSummary, prune
from .search import RESULT_COLUMNS, SearchIndex, candidate_rows, hits_frame, search_rows
from .store import CatalogStore

__all__ = ["Catalog"]

#: Progress callback: fraction done in [0, 1] and a message.
ProgressFn = Callable[[float, str], None]


class Catalog:
    """A catalog folder: window embeddings of many scenes, searchable in words.

    Open one with :meth:`open`, or build (or extend) one with :meth:`build`.

    Args:
        root: the ``NAME.dgtrs-catalog`` folder.

    Attributes:
        store: the catalog's files.
        summary: what :meth:`build` did, when this object came from it.

    """

    def __init__(self, root: str | Path) -> None:
        self.store = CatalogStore.open(root)
        self.summary: BuildSummary | None = None
        self._index: SearchIndex | None = None
        self._model: Any = None

    @classmethod
    def open(cls, path: str | Path) -> Catalog:
        """Open a catalog folder.

        Raises:
            InputError: if ``path`` is not a catalog.
            EmbeddingIndexError: if its format version is newer than this dgtrs-geo reads.

        """
        return cls(path)

    @classmethod
    def build(
        cls,
        sources: Sequence[str | Path],
        model: Any,
        path: str | Path,
        options: LocalizationOptions | None = None,
        *,
        asset: str = "visual",
        date_from: str | None = None,
        shard: str | tuple[int, int] | None = None,
        devices: int | None = None,
        num_nodes: int = 1,
        strategy: str = "auto",
        progress: ProgressFn | None = None,
        **option_keywords: Any,
    ) -> Catalog:
        """Index scenes into a catalog (created if needed): only new, changed or damaged ones.

        Every scene gets the windows and encoder of ``dgtrs-geo localize``; each is written as
        one GeoParquet part as soon as it is done, so a killed run resumes where it stopped. A
        scene that cannot be read is reported in ``catalog.summary`` and the others go on.

        Args:
            sources: raster files or URLs, globs, folders, VRT mosaics, STAC JSON files or URLs
                (see :func:`~dgtrs_geo.catalog.sources.resolve_sources`).
            model: a loaded model, a registry name or a checkpoint path.
            path: the catalog folder (``NAME.dgtrs-catalog``).
            options: window options (default: the catalog's own when it exists, else windows of
                128, 256 and 512 m); ``option_keywords`` change some of them.
            asset: the STAC asset key to index.
            date_from: a regular expression giving a file's date from its name.
            shard: this job's share of an array job, ``(I, N)`` or ``"I/N"`` (default: from
                the array-job variables, else all scenes). A shard does not finalize.
            devices: processes per node for Lightning (GPUs); default one.
            num_nodes: machines for Lightning.
            strategy: Lightning strategy (``"ddp"`` for several devices or nodes).
            progress: called with ``(fraction, message)``.
            **option_keywords: :class:`LocalizationOptions` fields: ``scales``, ``scale_unit``,
                ``bands``, ``stretch``, ``min_valid``, ``batch_size``, ``num_workers``,
                ``device``.

        Returns:
            The catalog, with :attr:`summary` set (on global rank 0; other ranks get the catalog
            with ``summary`` None).

        """
        summary = build_catalog(
            sources,
            model,
            path,
            options,
            asset=asset,
            date_from=date_from,
            shard=shard,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            progress=progress,
            **option_keywords,
        )
        catalog = cls(path)
        catalog.summary = summary
        if not isinstance(model, str | Path):
            catalog._model = model
        return catalog

    def finalize(self, *, progress: ProgressFn | None = None) -> FinalizeSummary:
        """Consolidate every verified part for search (after the shards of an array job)."""
        self._index = None
        return finalize(self.store.root, progress=progress)

    def prune(
        self, *, dry_run: bool = False, force: bool = False, progress: ProgressFn | None = None
    ) -> PruneSummary:
        """Drop the scenes whose local file no longer exists, then finalize (see ``prune.py``)."""
        self._index = None
        return prune(self.store.root, dry_run=dry_run, force=force, progress=progress)

    @property
    def index(self) -> SearchIndex:
        """The search index (opened on first use)."""
        if self._index is None:
            self._index = SearchIndex.load(self.store)
        return self._index

    def __len__(self) -> int:
        return len(self.index)

    def model(self, model: Any = None, device: str = "auto") -> Any:
        """Return the model to search with: ``model``, else the one the catalog was built with.

        Raises:
            IndexMismatchError: if ``model`` is not the catalog's (both named).
            ModelError: if the catalog's model cannot be loaded here.

        """
        if model is None and self._model is not None:
            return self._model
        if model is None:
            model = self.store.meta.get("model")
            if model is None:
                raise ModelError(
                    f"catalog {self.store.root} does not record where its model "
                    f"{self.store.model_id!r} comes from: pass it (--model NAME_OR_PATH)"
                )
        loaded = resolve_model(model, device)
        self.store.check(loaded.model_id)
        self._model = loaded
        return loaded

    def search(
        self,
        texts: str | Sequence[str],
        top: int = 10,
        *,
        model: Any = None,
        bbox: Sequence[float] | None = None,
        bbox_crs: str = "EPSG:4326",
        aoi: str | Path | None = None,
        date: str | None = None,
        min_distance: float | None = None,
        heatmaps: int = 0,
        out_dir: str | Path | None = None,
        device: str = "auto",
    ) -> gpd.GeoDataFrame:
        """Find the places across the catalog that best match each text.

        Args:
            texts: one text or several.
            top: results per text, one per place.
            model: the catalog's model (default: loaded from where the catalog says it came
                from); another model is refused.
            bbox: ``(minx, miny, maxx, maxy)`` in ``bbox_crs``: only windows touching it.
            bbox_crs: CRS of ``bbox`` (default EPSG:4326, longitude first).
            aoi: a vector file: only windows intersecting its features.
            date: ``START/END`` in ISO 8601, either side open (``..``): only scenes dated within.
            min_distance: metres between the centres of two results of one text (default: three
                quarters of the larger window's side: offset and nested windows of one place
                collapse, neighbours on one grid stay).
            heatmaps: also map each text on its ``heatmaps`` best scenes (needs ``out_dir``).
            out_dir: write ``results.gpkg``, ``results.parquet`` and ``heatmaps/`` there.
            device: where a model loaded here runs.

        Returns:
            A GeoDataFrame in EPSG:4326, one row per result: query, rank, score (cosine), scene,
            href, date, item_id, the window in scene pixels, size_m, geometry; with heatmaps,
            also the ``heatmap`` and ``polygons`` files.

        Raises:
            InputError: on empty texts, ``top`` < 1, a malformed filter, heatmaps without
                ``out_dir``.
            IndexMismatchError: if ``model`` is not the catalog's.
            EmbeddingIndexError: if the catalog is empty or was never finalized.

        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InputError("every query must be non-empty text describing what to find")
        if top < 1 or heatmaps < 0:
            raise InputError(
                f"--top must be at least 1 and --heatmaps at least 0 ({top}, {heatmaps})"
            )
        if heatmaps and out_dir is None:
            raise InputError("--heatmaps writes files: give an output folder (-o/--out-dir)")
        index = self.index
        loaded = self.model(model, device)
        rows = candidate_rows(index, bbox=bbox, bbox_crs=bbox_crs, aoi=aoi, date=date)
        vectors = encode_texts(loaded, texts)
        frames = []
        for text, vector in zip(texts, vectors, strict=True):
            if rows is not None and len(rows) == 0:
                scores, ids = np.zeros(0, np.float32), np.zeros(0, np.int64)
            else:
                scores, ids = search_rows(index, vector, top, rows, min_distance)
            frames.append(hits_frame(index, text, scores, ids))
        hits = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs="EPSG:4326")
        hits = hits[[*RESULT_COLUMNS, "geometry"]]
        if heatmaps and out_dir is not None:
            from .heatmaps import localize_scenes

            options = self.store.options
            hits = localize_scenes(self.store, index, hits, loaded, options, heatmaps, out_dir)
        if out_dir is not None:
            from .search import write_results

            write_results(hits, out_dir)
        return hits
