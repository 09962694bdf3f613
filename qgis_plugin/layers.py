"""Result layers: a group per run, a heatmap that says what its values are, score-styled polygons.

A run is described by a record (a JSON-able dict, see :mod:`qgis_plugin.history`): ``id``,
``query``, ``time``, ``scales``, ``scale_unit``, ``heatmap``, ``polygons``, ``normalise``,
``score_min``/``score_max`` (raw cosine), ``threshold``. Groups and layers carry the record's
``id`` as a custom property (saved with the project), so a run is found again by its id, never
by its name: two runs of the same query are two groups.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsColorRampLegendNodeSettings,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsProject,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererRange,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from .window_sizes import format_sizes

#: The heatmap ramp, low to high (perceptually ordered, readable over imagery).
RAMP = ["#000004", "#51127c", "#b73779", "#fc8961", "#fcfdbf"]
#: Share of the score range, from the bottom, drawn fully transparent.
TRANSPARENT_BELOW = 0.5
#: Opacity of the visible part of the heatmap (0-255), so the imagery shows through.
HEATMAP_ALPHA = 210
#: Most polygon classes by score.
POLYGON_CLASSES = 4
#: The polygon attribute that holds each polygon's best score.
SCORE_FIELD = "score_max"
#: Custom property holding a run's id on its group and layers.
RUN_PROPERTY = "dgtrs_geo/run"
#: What a min-max heatmap's values are, as its name and legend say.
RELATIVE = "relative match, 0-1"
COSINE = "cosine similarity"


def short(text: str, limit: int = 60) -> str:
    """Return ``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def group_name(record: Dict[str, Any]) -> str:
    """Return a run's group name: the query, its time and window sizes.

    ``"a bright square (14:03:12, 16/32 px)"``: two runs of the same query differ in the time
    and, when they were asked with other windows, in the sizes too.
    """
    clock = datetime.datetime.fromisoformat(record["time"]).strftime("%H:%M:%S")
    sizes = "/".join("{:g}".format(s) for s in record.get("scales") or []) or "default"
    return "{} ({}, {} {})".format(
        short(record["query"]), clock, sizes, record.get("scale_unit", "px")
    )


def heatmap_name(normalise: str = "minmax", query: Optional[str] = None) -> str:
    """Return the heatmap layer's name; with ``query`` (outside a group) it leads."""
    name = "heatmap ({})".format(RELATIVE if normalise != "cosine" else COSINE)
    return "{}: {}".format(short(query, 40), name) if query else name


def polygons_name(threshold: Optional[float], query: Optional[str] = None) -> str:
    """Return the polygon layer's name (the threshold it encloses)."""
    name = "polygons" if threshold is None else "polygons (score \u2265 {:g})".format(threshold)
    return "{}: {}".format(short(query, 40), name) if query else name


def heatmap_shader_items(low: float, high: float) -> List[QgsColorRampShader.ColorRampItem]:
    """Return ramp items from ``low`` to ``high``: transparent in the bottom part, then the ramp.

    The bottom ``TRANSPARENT_BELOW`` of the range is drawn transparent so only the places that
    match the sentence colour the map.
    """
    if not high > low:
        high = low + 1e-6
    cut = low + TRANSPARENT_BELOW * (high - low)
    clear = QColor(RAMP[0])
    clear.setAlpha(0)
    items = [
        QgsColorRampShader.ColorRampItem(low, clear, "{:g}".format(round(low, 3))),
        QgsColorRampShader.ColorRampItem(cut, clear, "{:g}".format(round(cut, 3))),
    ]
    steps = len(RAMP) - 1
    for i, name in enumerate(RAMP[1:], start=1):
        value = cut + (high - cut) * i / steps
        color = QColor(name)
        color.setAlpha(HEATMAP_ALPHA)
        items.append(QgsColorRampShader.ColorRampItem(value, color, "{:g}".format(round(value, 3))))
    return items


def _value_range(layer: QgsRasterLayer, normalise: str) -> Tuple[float, float]:
    if normalise != "cosine":
        # Min-max maps run from 0 to 1 by construction: the legend says so for every run.
        return 0.0, 1.0
    stats = layer.dataProvider().bandStatistics(
        1, QgsRasterBandStats.Stats.Min | QgsRasterBandStats.Stats.Max
    )
    return float(stats.minimumValue), float(stats.maximumValue)


def style_heatmap(layer: QgsRasterLayer, normalise: str = "minmax") -> Tuple[float, float]:
    """Give a heatmap the pseudocolor ramp and a legend that says what it shows.

    Args:
        layer: the heatmap.
        normalise: ``minmax`` (values are a relative match, 0 to 1) or ``cosine`` (raw cosine
            similarity, the ramp spans the layer's values).

    Returns:
        The ``(min, max)`` the ramp spans.

    """
    low, high = _value_range(layer, normalise)
    ramp_shader = QgsColorRampShader(low, high)
    ramp_shader.setColorRampType(QgsColorRampShader.Type.Interpolated)
    ramp_shader.setColorRampItemList(heatmap_shader_items(low, high))
    legend = QgsColorRampLegendNodeSettings()
    legend.setUseContinuousLegend(True)
    if normalise != "cosine":
        legend.setMinimumLabel("0 (weakest)")
        legend.setMaximumLabel("1 (best match)")
    ramp_shader.setLegendSettings(legend)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp_shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    return low, high


def describe_heatmap(layer: QgsRasterLayer, record: Dict[str, Any]) -> str:
    """Put what the heatmap's values mean, and the raw cosine range, in its metadata and tooltip.

    Returns:
        The description (the layer's abstract, shown in the layer tree's tooltip).

    """
    if record.get("normalise", "minmax") == "cosine":
        meaning = "Raw cosine similarity of each cell to the query."
    else:
        meaning = (
            "Relative match, 0-1: each map is scaled from its weakest window (0) to its best (1), "
            "so values compare places within this map, not across maps."
        )
    low, high = record.get("score_min"), record.get("score_max")
    if low is not None and high is not None:
        raw = "Raw cosine similarity of the windows: {:.4f} to {:.4f}.".format(low, high)
    elif high is not None:
        raw = "Raw cosine similarity of the best window: {:.4f}.".format(high)
    else:
        raw = ""
    sizes = format_sizes(record.get("scales") or []) or "the engine's default"
    text = " ".join(
        part
        for part in (
            "Query: \u201c{}\u201d.".format(record["query"]),
            meaning,
            raw,
            "Window sizes {} {}; model {}.".format(
                sizes, record.get("scale_unit", "px"), record.get("model", "?")
            ),
        )
        if part
    )
    layer.setTitle(heatmap_name(record.get("normalise", "minmax"), record["query"]))
    layer.setAbstract(text)
    metadata = layer.metadata()
    metadata.setTitle(layer.title())
    metadata.setAbstract(text)
    metadata.addKeywords(
        "dgtrs-geo", ["relative match" if record.get("normalise") != "cosine" else "cosine"]
    )
    layer.setMetadata(metadata)
    return text


def _class_bounds(values: List[float]) -> List[Tuple[float, float, str]]:
    """Return up to :data:`POLYGON_CLASSES` ``(lower, upper, label)`` classes with distinct labels.

    One value (or all equal) gives one class labelled with it; otherwise equal intervals, with
    as many decimals as it takes for no two labels to read alike, and fewer classes when the
    values are fewer.
    """
    distinct = sorted(set(values))
    if len(distinct) <= 1:
        value = distinct[0] if distinct else 0.0
        return [(value, value, "{:.3f}".format(value))]
    low, high = distinct[0], distinct[-1]
    count = min(POLYGON_CLASSES, len(distinct))
    edges = [low + (high - low) * i / count for i in range(count + 1)]
    for decimals in range(3, 8):
        labels = ["{:.{}f}".format(edge, decimals) for edge in edges]
        if len(set(labels)) == len(labels):
            break
    return [
        (edges[i], edges[i + 1], "{} - {}".format(labels[i], labels[i + 1])) for i in range(count)
    ]


def style_polygons(layer: QgsVectorLayer, field: str = SCORE_FIELD) -> None:
    """Colour polygons by ``field`` in classes of the ramp, outlines kept visible."""
    if layer.fields().indexOf(field) < 0:
        return
    values = [float(f[field]) for f in layer.getFeatures() if f[field] is not None]
    classes = _class_bounds(values)
    ramp = QgsGradientColorRamp(QColor(RAMP[2]), QColor(RAMP[-1]))
    ranges = []
    for i, (lower, upper, label) in enumerate(classes):
        color = ramp.color(i / max(1, len(classes) - 1)) if len(classes) > 1 else ramp.color(1.0)
        symbol = QgsFillSymbol.createSimple(
            {
                "color": "{},{},{},70".format(color.red(), color.green(), color.blue()),
                "outline_color": color.name(),
                "outline_width": "0.6",
            }
        )
        ranges.append(QgsRendererRange(lower, upper, symbol, label))
    layer.setRenderer(QgsGraduatedSymbolRenderer(field, ranges))
    layer.triggerRepaint()


def _tag(layer: QgsMapLayer, run_id: str) -> QgsMapLayer:
    layer.setCustomProperty(RUN_PROPERTY, run_id)
    return layer


def add_result_group(
    record: Dict[str, Any], project: Optional[QgsProject] = None
) -> QgsLayerTreeGroup:
    """Load a run's heatmap and polygons into a new group at the top of the layer tree.

    Raises:
        ValueError: if the heatmap cannot be loaded.

    """
    project = project or QgsProject.instance()
    heatmap = QgsRasterLayer(record["heatmap"], heatmap_name(record.get("normalise", "minmax")))
    if not heatmap.isValid():
        raise ValueError("cannot load the heatmap {}".format(record["heatmap"]))
    style_heatmap(heatmap, record.get("normalise", "minmax"))
    describe_heatmap(heatmap, record)
    group = project.layerTreeRoot().insertGroup(0, group_name(record))
    group.setCustomProperty(RUN_PROPERTY, record["id"])
    if record.get("polygons"):
        polygons = QgsVectorLayer(record["polygons"], polygons_name(record.get("threshold")), "ogr")
        # No polygon scored above the threshold: an empty layer would only clutter the tree.
        if polygons.isValid() and polygons.featureCount() > 0:
            style_polygons(polygons)
            project.addMapLayer(_tag(polygons, record["id"]), False)
            group.addLayer(polygons)
    project.addMapLayer(_tag(heatmap, record["id"]), False)
    group.addLayer(heatmap)
    return group


def find_group(run_id: str, project: Optional[QgsProject] = None) -> Optional[QgsLayerTreeGroup]:
    """Return the group of run ``run_id`` (None if it was removed)."""
    root = (project or QgsProject.instance()).layerTreeRoot()
    for group in root.findGroups(True):
        if group.customProperty(RUN_PROPERTY) == run_id:
            return group
    return None


def remove_results(project: Optional[QgsProject] = None) -> List[str]:
    """Remove every run's layers and groups from the project; return the layers' sources."""
    project = project or QgsProject.instance()
    layers = [layer for layer in project.mapLayers().values() if layer.customProperty(RUN_PROPERTY)]
    sources = [layer.source().split("|")[0] for layer in layers]
    project.removeMapLayers([layer.id() for layer in layers])
    root = project.layerTreeRoot()
    for group in root.findGroups(True):
        if group.customProperty(RUN_PROPERTY) and not group.findLayers():
            group.parent().removeChildNode(group)
    return sources
