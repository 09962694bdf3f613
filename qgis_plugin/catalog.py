"""Catalog search results in QGIS: the worker's requests, the ranked layer and its style.

A catalog search answers with rows (query, rank, score, scene, href, date, window, geometry in
EPSG:4326) and a GeoPackage holding the same rows; the plugin loads that GeoPackage as one layer,
coloured by score in graduated classes, and localizes a result's scene on request from the
catalog's stored embeddings (worker op ``catalog_localize``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from qgis.core import (
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRendererRange,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from .layers import RAMP, RUN_PROPERTY, _class_bounds, short

#: The score attribute of a search result (cosine of the text and the window).
SCORE = "score"
#: Folder extension of a catalog built by ``dgtrs-geo catalog index``.
CATALOG_SUFFIX = ".dgtrs-catalog"


def search_params(
    catalog: str,
    queries: Sequence[str],
    *,
    top: int,
    out_dir: str,
    device: str = "auto",
    model: str = "",
    bbox: Optional[Sequence[float]] = None,
    bbox_crs: str = "EPSG:4326",
    date: str = "",
) -> Dict[str, Any]:
    """Return the params of a ``catalog_search`` request (the catalog's model when ``model`` is "")."""
    options: Dict[str, Any] = {"top": int(top), "out_dir": out_dir, "device": device}
    if bbox is not None:
        options.update(bbox=[float(v) for v in bbox], bbox_crs=bbox_crs)
    if date.strip():
        options["date"] = date.strip()
    params: Dict[str, Any] = {"catalog": catalog, "queries": list(queries), "options": options}
    if model.strip():
        params["model"] = model.strip()
    return params


def build_params(
    sources: Sequence[str], out: str, model: str, options: Dict[str, Any]
) -> Dict[str, Any]:
    """Return the params of a ``catalog_build`` request (None options left to the engine)."""
    chosen = {key: value for key, value in options.items() if value not in (None, "", [])}
    return {"sources": list(sources), "out": out, "model": model, "options": chosen}


def results_name(queries: Sequence[str]) -> str:
    """Return the ranked layer's name: the query (or queries) it answers."""
    return "{} (catalog)".format(short(" | ".join(queries), 50))


def style_scores(layer: QgsVectorLayer, field: str = SCORE) -> None:
    """Colour result windows by ``field`` in graduated classes of the heatmap's ramp."""
    if layer.fields().indexOf(field) < 0:
        return
    values = [float(f[field]) for f in layer.getFeatures() if f[field] is not None]
    classes = _class_bounds(values)
    ramp = QgsGradientColorRamp(QColor(RAMP[1]), QColor(RAMP[-1]))
    ranges = []
    for i, (lower, upper, label) in enumerate(classes):
        color = ramp.color(i / max(1, len(classes) - 1)) if len(classes) > 1 else ramp.color(1.0)
        symbol = QgsFillSymbol.createSimple(
            {
                "color": "{},{},{},60".format(color.red(), color.green(), color.blue()),
                "outline_color": color.name(),
                "outline_width": "0.8",
            }
        )
        ranges.append(QgsRendererRange(lower, upper, symbol, label))
    layer.setRenderer(QgsGraduatedSymbolRenderer(field, ranges))
    layer.triggerRepaint()


def load_results(
    gpkg: str,
    queries: Sequence[str],
    run_id: str,
    layer_name: str = "results",
    project: Optional[QgsProject] = None,
) -> QgsVectorLayer:
    """Load a search's GeoPackage as a styled layer at the top of the project; return it.

    Raises:
        ValueError: if the GeoPackage cannot be loaded.

    """
    layer = QgsVectorLayer("{}|layername={}".format(gpkg, layer_name), results_name(queries), "ogr")
    if not layer.isValid():
        raise ValueError("cannot load the search results {}".format(gpkg))
    style_scores(layer)
    layer.setCustomProperty(RUN_PROPERTY, run_id)
    project = project or QgsProject.instance()
    project.addMapLayer(layer, False)
    project.layerTreeRoot().insertLayer(0, layer)
    return layer


def scene_layer(href: str, scene: str, project: Optional[QgsProject] = None) -> QgsRasterLayer:
    """Return the project's layer of a catalog scene, loading it (at the bottom) if needed.

    Raises:
        ValueError: if the scene cannot be loaded.

    """
    project = project or QgsProject.instance()
    for layer in project.mapLayers().values():
        if isinstance(layer, QgsRasterLayer) and layer.source() == href:
            return layer
    source = href if not href.startswith(("http://", "https://")) else "/vsicurl/" + href
    layer = QgsRasterLayer(source, scene)
    if not layer.isValid():
        raise ValueError("cannot load the scene {}".format(href))
    project.addMapLayer(layer, False)
    project.layerTreeRoot().addLayer(layer)
    return layer
