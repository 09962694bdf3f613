"""Heatmaps of the best scenes, from the embeddings a catalog stores: no window is encoded again.

For each scene, the catalog's rows of that scene become an in-memory
:class:`~dgtrs_geo.localization.index.EmbeddingIndex` (its windows, embeddings, the scene's
current fingerprint and description, the plan of its window sizes in pixels), which
:meth:`Localizer.query <dgtrs_geo.localization.session.Localizer.query>` scores like any index:
heatmap GeoTIFFs and polygon GeoPackages, as ``dgtrs-geo localize`` writes them. A scene whose
pixels changed since it was indexed is skipped with a warning (its stored embeddings no longer
describe it).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np

from ..errors import Cancelled, OutputError
from ..localization.index import EmbeddingIndex
from ..localization.options import LocalizationOptions
from ..localization.raster import RasterSource
from ..localization.session import Localizer, plan_meta
from ..localization.windows import plan_windows
from .indexing import SCENE_ERRORS, scene_fingerprint
from .remote import local_raster
from .search import SearchIndex
from .sources import Scene

__all__ = ["best_scenes", "localize_scenes"]

#: Files written per scene and query.
OUTPUTS = ("heatmap", "polygons")


def best_scenes(hits: gpd.GeoDataFrame, n: int) -> dict[str, list[str]]:
    """Return, for the ``n`` best scenes of each query, the queries to map on it, by scene id."""
    wanted: dict[str, list[str]] = {}
    for query, rows in hits.groupby("query", sort=False):
        for scene in rows.sort_values("rank")["scene"].drop_duplicates().head(n):
            wanted.setdefault(scene, []).append(str(query))
    return wanted


def _scene_index(
    index: SearchIndex, position: int, path: Path, model, options: LocalizationOptions
) -> EmbeddingIndex:
    """The stored rows of one scene as an in-memory embedding index of the raster at ``path``."""
    record = index.scenes.iloc[position]
    start, stop = int(record["row_start"]), int(record["row_stop"])
    source = RasterSource(path, bands=options.bands, stretch=options.stretch)
    try:
        plan = plan_windows(source.width, source.height, [int(s) for s in options.scales])
        return EmbeddingIndex.create(
            model_id=model.model_id,
            fingerprint=source.fingerprint(),
            raster=source.describe(),
            plan=plan_meta(plan, False, options.min_valid),
            windows=np.asarray(index.windows[start:stop], dtype=np.int64),
            embeddings=np.asarray(index.embeddings[start:stop], dtype=np.float32),
        )
    finally:
        source.close()


def localize_scenes(
    index: SearchIndex,
    hits: gpd.GeoDataFrame,
    model,
    options: LocalizationOptions,
    n: int,
    out_dir: str | Path,
) -> gpd.GeoDataFrame:
    """Write heatmaps and polygons of each query on its ``n`` best scenes.

    Args:
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
    for scene_id, queries in best_scenes(hits, n).items():
        record = index.scenes.iloc[positions[scene_id]]
        scene = Scene(scene_id, record["href"])
        try:
            if scene_fingerprint(scene) != record["fingerprint"]:
                warnings.warn(
                    f"{scene.href} changed since it was indexed: no heatmap for it; run "
                    "`dgtrs-geo catalog index` again to index it anew",
                    stacklevel=2,
                )
                continue
            scene_options = options.replace(
                scales=tuple(record["scales_px"]),
                scale_unit="px",
                out_dir=str(Path(out_dir) / "heatmaps" / scene_id),
                outputs=OUTPUTS,
                force=True,  # the windows are embedded already: a large plan costs nothing
            )
            with local_raster(scene.href) as path:
                stored = _scene_index(index, positions[scene_id], path, model, scene_options)
                results = Localizer(model, scene_options).query(path, queries, stored)
        except (Cancelled, OutputError):
            raise
        except SCENE_ERRORS as error:
            # One unreadable scene does not cost the others their heatmaps.
            warnings.warn(f"no heatmap for {scene.href}: {error}", stacklevel=2)
            continue
        for result in results:
            mine = (hits["scene"] == scene_id) & (hits["query"] == result.query)
            for kind in OUTPUTS:
                if kind in result.paths:
                    hits.loc[mine, kind] = str(result.paths[kind])
    return hits
