"""Style and name the Processing outputs as the dock does, when QGIS loads them.

QGIS calls a ``QgsProcessingLayerPostProcessorInterface`` on the main thread after it loads an
algorithm's output layer (toolbox, batch, modeler, ``processing.runAndLoadResults``); ``qgis_process``
loads nothing and calls none.
"""

from __future__ import annotations

from typing import Any, Dict, List

from qgis.core import (
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsVectorLayer,
)

from ..layers import (
    RUN_PROPERTY,
    describe_heatmap,
    heatmap_name,
    polygons_name,
    style_heatmap,
    style_polygons,
)

# QGIS holds post-processors by pointer without keeping the Python objects alive: they stay here.
_alive: List["StyleOutput"] = []
_KEEP = 64


class StyleOutput(QgsProcessingLayerPostProcessorInterface):
    """Give a loaded output the dock's style, a name after the query and the run's id.

    Args:
        kind: ``heatmap`` or ``polygons``.
        record: the run (query, scales, score range ...; see :mod:`qgis_plugin.layers`).

    """

    def __init__(self, kind: str, record: Dict[str, Any]) -> None:
        super().__init__()
        self.kind = kind
        self.record = dict(record)

    @classmethod
    def create(cls, kind: str, record: Dict[str, Any]) -> "StyleOutput":
        """Return a post-processor that lives until QGIS has used it."""
        processor = cls(kind, record)
        _alive.append(processor)
        del _alive[:-_KEEP]
        return processor

    def postProcessLayer(  # noqa: N802
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Style the layer (QGIS calls this on the main thread)."""
        query = self.record["query"]
        if self.kind == "heatmap" and isinstance(layer, QgsRasterLayer):
            style_heatmap(layer, self.record.get("normalise", "minmax"))
            describe_heatmap(layer, self.record)
            layer.setName(heatmap_name(self.record.get("normalise", "minmax"), query))
        elif self.kind == "polygons" and isinstance(layer, QgsVectorLayer):
            style_polygons(layer)
            layer.setName(polygons_name(self.record.get("threshold"), query))
        layer.setCustomProperty(RUN_PROPERTY, self.record["id"])


def style_on_load(
    context: QgsProcessingContext, output: str, kind: str, record: Dict[str, Any]
) -> None:
    """Have QGIS style and name ``output`` when it loads it (nothing if it will not load it)."""
    if not context.willLoadLayerOnCompletion(output):
        return
    details = context.layerToLoadOnCompletionDetails(output)
    query = record["query"]
    if kind == "heatmap":
        details.name = heatmap_name(record.get("normalise", "minmax"), query)
    else:
        details.name = polygons_name(record.get("threshold"), query)
    details.setPostProcessor(StyleOutput.create(kind, record))
