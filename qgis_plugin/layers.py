"""Result layers: a group named after the query, a styled heatmap and score-styled polygons."""

from __future__ import annotations

from typing import List, Optional, Tuple

from qgis.core import (
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsLayerTreeGroup,
    QgsProject,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererRange,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

#: The heatmap ramp, low to high (perceptually ordered, readable over imagery).
RAMP = ["#000004", "#51127c", "#b73779", "#fc8961", "#fcfdbf"]
#: Share of the score range, from the bottom, drawn fully transparent.
TRANSPARENT_BELOW = 0.5
#: Opacity of the visible part of the heatmap (0-255), so the imagery shows through.
HEATMAP_ALPHA = 210
#: Polygon classes by score.
POLYGON_CLASSES = 4
#: The polygon attribute that holds each polygon's best score.
SCORE_FIELD = "score_max"


def group_name(query: str, limit: int = 60) -> str:
    """Return the layer-group name for a query: the query itself, shortened to ``limit``."""
    text = " ".join(query.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def heatmap_shader_items(low: float, high: float) -> List[QgsColorRampShader.ColorRampItem]:
    """Return ramp items from ``low`` to ``high``: transparent in the bottom part, then the ramp.

    The bottom ``TRANSPARENT_BELOW`` of the range is drawn transparent so only the places that
    match the sentence colour the map.
    """
    if not high > low:
        high = low + 1e-6
    cut = low + TRANSPARENT_BELOW * (high - low)
    items = []
    clear = QColor(RAMP[0])
    clear.setAlpha(0)
    items.append(QgsColorRampShader.ColorRampItem(low, clear, "{:.3f}".format(low)))
    items.append(QgsColorRampShader.ColorRampItem(cut, clear, "{:.3f}".format(cut)))
    steps = len(RAMP) - 1
    for i, name in enumerate(RAMP[1:], start=1):
        value = cut + (high - cut) * i / steps
        color = QColor(name)
        color.setAlpha(HEATMAP_ALPHA)
        items.append(QgsColorRampShader.ColorRampItem(value, color, "{:.3f}".format(value)))
    return items


def style_heatmap(layer: QgsRasterLayer) -> Tuple[float, float]:
    """Give a heatmap layer the pseudocolor ramp over its value range; return ``(min, max)``."""
    stats = layer.dataProvider().bandStatistics(
        1, QgsRasterBandStats.Stats.Min | QgsRasterBandStats.Stats.Max
    )
    low, high = float(stats.minimumValue), float(stats.maximumValue)
    ramp_shader = QgsColorRampShader(low, high)
    ramp_shader.setColorRampType(QgsColorRampShader.Type.Interpolated)
    ramp_shader.setColorRampItemList(heatmap_shader_items(low, high))
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp_shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    return low, high


def style_polygons(layer: QgsVectorLayer, field: str = SCORE_FIELD) -> None:
    """Colour polygons by ``field`` in equal classes of the ramp, outlines kept visible."""
    index = layer.fields().indexOf(field)
    if index < 0:
        return
    values = [feature[field] for feature in layer.getFeatures() if feature[field] is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if not high > low:
        high = low + 1e-6
    ramp = QgsGradientColorRamp(QColor(RAMP[2]), QColor(RAMP[-1]))
    ranges = []
    for i in range(POLYGON_CLASSES):
        lower = low + (high - low) * i / POLYGON_CLASSES
        upper = low + (high - low) * (i + 1) / POLYGON_CLASSES
        color = ramp.color(i / max(1, POLYGON_CLASSES - 1))
        symbol = QgsFillSymbol.createSimple(
            {
                "color": "{},{},{},70".format(color.red(), color.green(), color.blue()),
                "outline_color": color.name(),
                "outline_width": "0.6",
            }
        )
        ranges.append(
            QgsRendererRange(lower, upper, symbol, "{:.3f} - {:.3f}".format(lower, upper))
        )
    layer.setRenderer(QgsGraduatedSymbolRenderer(field, ranges))
    layer.triggerRepaint()


def add_result_group(
    query: str,
    heatmap_path: str,
    polygons_path: Optional[str],
    project: Optional[QgsProject] = None,
) -> QgsLayerTreeGroup:
    """Load a query's heatmap and polygons into a new group at the top of the layer tree.

    Args:
        query: the sentence; names the group and the layers.
        heatmap_path: the float32 GeoTIFF heatmap.
        polygons_path: the polygons file (GeoPackage), or None when there are none.
        project: the project to add to (the current one by default).

    Raises:
        ValueError: if the heatmap cannot be loaded.

    """
    project = project or QgsProject.instance()
    heatmap = QgsRasterLayer(heatmap_path, "heatmap: " + group_name(query, 40))
    if not heatmap.isValid():
        raise ValueError("cannot load the heatmap {}".format(heatmap_path))
    style_heatmap(heatmap)
    root = project.layerTreeRoot()
    group = root.insertGroup(0, group_name(query))
    if polygons_path:
        polygons = QgsVectorLayer(polygons_path, "polygons: " + group_name(query, 40), "ogr")
        # No polygon scored above the threshold: an empty layer would only clutter the tree.
        if polygons.isValid() and polygons.featureCount() > 0:
            style_polygons(polygons)
            project.addMapLayer(polygons, False)
            group.addLayer(polygons)
    project.addMapLayer(heatmap, False)
    group.addLayer(heatmap)
    return group
