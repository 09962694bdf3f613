"""Heatmaps of the best scenes, from the embeddings a catalog stores: no window is encoded again.

For each scene, the windows and float32 embeddings of its part become an in-memory
:class:`~dgtrs_geo.localization.index.EmbeddingIndex` (its windows, embeddings, the scene's
current fingerprint and description, the plan of its window sizes in pixels), which
:meth:`Localizer.query <dgtrs_geo.localization.session.Localizer.query>` scores like any index:
heatmap GeoTIFFs and polygon GeoPackages, as ``dgtrs-geo localize`` writes them. A scene whose
pixels changed since it was indexed is refused (its stored embeddings no longer describe it).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq

from ..errors import Cancelled, EmbeddingIndexError, IndexMismatchError, OutputError
from ..localization.index import EmbeddingIndex
from ..localization.options import LocalizationOptions
from ..localization.raster import RasterSource
from ..localization.session import LocalizationResult, Localizer, plan_meta
from ..localization.windows import plan_windows
from .indexing import SCENE_ERRORS, scene_fingerprint
from .remote import local_raster
from .search import SearchIndex
from .sources import Scene
from .store import CatalogStore

__all__ = ["best_scenes", "localize_scene", "localize_scenes"]

#: Files written per scene and query.
OUTPUTS = ("heatmap", "polygons")


def best_scenes(hits: gpd.GeoDataFrame, n: int) -> dict[str, list[str]]:
    """Return, for the ``n`` best scenes of each query, the queries to map on it, by scene id."""
    wanted: dict[str, list[str]] = {}
    for query, rows in hits.groupby("query", sort=False):
        for scene in rows.sort_values("rank")["scene"].drop_duplicates().head(n):
            wanted.setdefault(scene, []).append(str(query))
    return wanted


def _stored_rows(store: CatalogStore, record: Any) -> tuple[np.ndarray, np.ndarray]:
    """A scene's windows and float32 embeddings, read from its verified part."""
    if (problem := store.verify(dict(record))) is not None:
        raise EmbeddingIndexError(f"{problem}: run `dgtrs-geo catalog index` again")
    table = pq.read_table(
        store.part_path(record["scene_id"]),
        columns=["col_off", "row_off", "width", "height", "embedding"],
    )
    windows = np.stack([table[c].to_numpy() for c in table.column_names[:4]], axis=1)
    vectors = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return windows.astype(np.int64), vectors.reshape(table.num_rows, -1).astype(np.float32)


def _scene_index(
    store: CatalogStore, record: Any, path: Path, model: Any, options: LocalizationOptions
) -> EmbeddingIndex:
    """The stored rows of one scene as an in-memory embedding index of the raster at ``path``."""
    windows, embeddings = _stored_rows(store, record)
    source = RasterSource(path, bands=options.bands, stretch=options.stretch)
    try:
        plan = plan_windows(source.width, source.height, [int(s) for s in options.scales])
        return EmbeddingIndex.create(
            model_id=model.model_id,
            fingerprint=source.fingerprint(),
            raster=source.describe(),
            plan=plan_meta(plan, False, options.min_valid),
            windows=windows,
            embeddings=embeddings,
        )
    finally:
        source.close()


def localize_scene(
    store: CatalogStore,
    record: Any,
    texts: Sequence[str],
    localizer: Localizer,
    options: LocalizationOptions,
    *,
    progress: Any = None,
    cancel: threading.Event | None = None,
) -> list[LocalizationResult]:
    """Localize ``texts`` on one scene of a catalog from its stored embeddings.

    Args:
        store: the catalog.
        record: the scene's row of the search index's scene table.
        texts: what to find.
        localizer: a session of the catalog's model.
        options: the catalog's options with the run's outputs and ``out_dir``; the window sizes
            are the scene's, in pixels.
        progress: passed to :meth:`Localizer.query`.
        cancel: passed to :meth:`Localizer.query`.

    Raises:
        IndexMismatchError: if the scene's pixels changed since it was indexed.
        EmbeddingIndexError: if its part fails its checksum.

    """
    scene = Scene(record["scene_id"], record["href"])
    if scene_fingerprint(scene) != record["fingerprint"]:
        raise IndexMismatchError(
            f"{scene.href} changed since it was indexed: its stored embeddings no longer describe "
            f"it; run `dgtrs-geo catalog index` into {store.root} again"
        )
    options = options.replace(
        scales=tuple(record["scales_px"]),
        scale_unit="px",
        force=True,  # the windows are embedded already: a large plan costs nothing
    )
    with local_raster(scene.href) as path:
        stored = _scene_index(store, record, path, localizer.model, options)
        return localizer.query(
            path, texts, stored, options=options, progress=progress, cancel=cancel
        )


def localize_scenes(
    store: CatalogStore,
    index: SearchIndex,
    hits: gpd.GeoDataFrame,
    model: Any,
    options: LocalizationOptions,
    n: int,
    out_dir: str | Path,
) -> gpd.GeoDataFrame:
    """Write heatmaps and polygons of each query on its ``n`` best scenes.

    A scene that cannot be mapped (changed since it was indexed, unreadable, a damaged part) is
    skipped with a warning; the others are mapped.

    Args:
        store: the catalog, whose parts hold each scene's float32 embeddings.
        index: the catalog's search index.
        hits: search results (columns ``query``, ``rank``, ``scene``...).
        model: the catalog's model, loaded.
        options: the catalog's options (bands, stretch, min_valid) and the run's.
        n: scenes per query.
        out_dir: files go to ``out_dir/heatmaps/<scene id>/<query>.tif`` and ``.gpkg``.

    Returns:
        ``hits`` with columns ``heatmap`` and ``polygons``: the files of each hit's query on its
        scene, where they were made.

    """
    hits = hits.copy()
    hits["heatmap"] = None
    hits["polygons"] = None
    positions = {s: i for i, s in enumerate(index.scenes["scene_id"])}
    localizer = Localizer(model, options)
    for scene_id, queries in best_scenes(hits, n).items():
        record = index.scenes.iloc[positions[scene_id]]
        folder = str(Path(out_dir) / "heatmaps" / scene_id)
        try:
            results = localize_scene(
                store, record, queries, localizer, options.replace(out_dir=folder, outputs=OUTPUTS)
            )
        except (Cancelled, OutputError):
            raise
        except SCENE_ERRORS as error:
            # One scene that cannot be mapped does not cost the others their heatmaps.
            warnings.warn(f"no heatmap for {record['href']}: {error}", stacklevel=2)
            continue
        for result in results:
            mine = (hits["scene"] == scene_id) & (hits["query"] == result.query)
            for kind in OUTPUTS:
                if kind in result.paths:
                    hits.loc[mine, kind] = str(result.paths[kind])
    return hits
