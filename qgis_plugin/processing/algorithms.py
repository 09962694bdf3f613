"""Processing algorithms: build an embedding index, localize a text query (and the catalog's).

Both send one request to the shared worker; ``feedback`` carries its progress, and cancelling
the algorithm cancels the job (the worker is killed if it does not stop within a second).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from .. import history, settings
from ..backend.protocol import Run, result_path, worker_params
from ..sources import UnsupportedLayer, parse_scales, run_request
from ..tools import tr
from .jobs import run_job
from .postprocess import style_on_load

UNITS = ["px", "m"]


class _EngineAlgorithm(QgsProcessingAlgorithm):
    """Parameters both algorithms share, and the worker round trip."""

    INPUT = "INPUT"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    BANDS = "BANDS"
    SCALES = "SCALES"
    SCALE_UNIT = "SCALE_UNIT"
    EXTENT = "EXTENT"
    INDEX_DIR = "INDEX_DIR"

    def group(self) -> str:  # noqa: D102
        return ""

    def groupId(self) -> str:  # noqa: D102, N802
        return ""

    def createInstance(self) -> "QgsProcessingAlgorithm":  # noqa: D102, N802
        return type(self)()

    def _add_common_parameters(self) -> None:
        self.addParameter(
            QgsProcessingParameterRasterLayer(self.INPUT, tr("Raster layer (local file)"))
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.MODEL, tr("Model (registry name or checkpoint path)"), settings.model()
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.DEVICE, tr("Device"), settings.DEVICES, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterBand(
                self.BANDS,
                tr("Bands read as red, green, blue (default: the first three)"),
                parentLayerParameterName=self.INPUT,
                optional=True,
                allowMultiple=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.SCALES,
                tr("Window sizes (default: fit to the layer, a sixth of its shorter side and "
                   "twice and three times that)"),
                "",
                optional=True,
            )
        )  # fmt: skip
        self.addParameter(
            QgsProcessingParameterEnum(
                self.SCALE_UNIT, tr("Window size unit"), UNITS, defaultValue=0, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterExtent(
                self.EXTENT, tr("Area to search (default: whole layer)"), optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.INDEX_DIR,
                tr("Index folder (default: the plugin's, see Backend settings)"),
                behavior=QgsProcessingParameterFile.Behavior.Folder,
                optional=True,
            )
        )

    def _common_request(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> Run:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(tr("Choose a raster layer"))
        bands = self.parameterAsInts(parameters, self.BANDS, context)
        if bands and len(bands) not in (1, 3):
            raise QgsProcessingException(tr("Choose one band (grey) or three (red, green, blue)"))
        extent = None
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        try:
            return run_request(
                layer,
                model=self.parameterAsString(parameters, self.MODEL, context).strip()
                or settings.model(),
                device=settings.DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
                bands=bands,
                scales=parse_scales(self.parameterAsString(parameters, self.SCALES, context)),
                scale_unit=UNITS[self.parameterAsEnum(parameters, self.SCALE_UNIT, context)],
                extent=extent,
                index_dir=self.parameterAsString(parameters, self.INDEX_DIR, context)
                or settings.index_dir(),
            )
        except (UnsupportedLayer, ValueError) as error:
            raise QgsProcessingException(str(error)) from error

    def _run(self, op: str, run: Run, feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        return run_job(op, lambda info: worker_params(op, run, info), feedback)


class BuildIndexAlgorithm(_EngineAlgorithm):
    """Encode a raster's windows once; later queries on it skip the expensive step."""

    INDEX = "INDEX"
    WINDOWS = "WINDOWS"

    def name(self) -> str:  # noqa: D102
        return "buildindex"

    def displayName(self) -> str:  # noqa: D102, N802
        return tr("Build embedding index")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return tr(
            "Embeds the windows of a raster with a DGTRS-CLIP model and stores them in an "
            "embedding index, so that text queries on this raster answer in well under a second. "
            "Localize text query builds the index itself when it is missing; run this ahead of "
            "time for large rasters."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: D102, N802
        self._add_common_parameters()
        self.addOutput(QgsProcessingOutputFile(self.INDEX, tr("Embedding index")))
        self.addOutput(QgsProcessingOutputNumber(self.WINDOWS, tr("Windows embedded")))

    def processAlgorithm(  # noqa: D102, N802
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        result = self._run("index", self._common_request(parameters, context), feedback)
        feedback.pushInfo(
            tr(
                "Index {} ({} windows, {:.1f} s)",
                result["index"],
                result["windows"],
                result.get("seconds", 0.0),
            )
        )
        return {self.INDEX: result["index"], self.WINDOWS: result["windows"]}


class LocalizeAlgorithm(_EngineAlgorithm):
    """Find where a sentence matches a raster: a heatmap and the polygons above a threshold."""

    QUERY = "QUERY"
    THRESHOLD = "THRESHOLD"
    OUTPUT_HEATMAP = "OUTPUT_HEATMAP"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"

    def name(self) -> str:  # noqa: D102
        return "localize"

    def displayName(self) -> str:  # noqa: D102, N802
        return tr("Localize text query")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return tr(
            "Scores every part of a raster against a sentence (up to 248 tokens) with a "
            "DGTRS-CLIP model. Writes a heatmap of scores in the raster's CRS and polygons around "
            "the areas scoring above the threshold, with their best and mean scores. The first "
            "query on a raster builds its embedding index; later ones reuse it."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: D102, N802
        self._add_common_parameters()
        self.addParameter(QgsProcessingParameterString(self.QUERY, tr("Query"), multiLine=True))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD,
                tr("Polygon threshold (share of the score range, 0-1)"),
                QgsProcessingParameterNumber.Type.Double,
                defaultValue=0.5,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(self.OUTPUT_HEATMAP, tr("Heatmap"))
        )
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                self.OUTPUT_POLYGONS, tr("Polygons"), QgsProcessing.SourceType.TypeVectorPolygon
            )
        )

    def processAlgorithm(  # noqa: D102, N802
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        query = self.parameterAsString(parameters, self.QUERY, context).strip()
        if not query:
            raise QgsProcessingException(tr("Type a query: a sentence describing what to find"))
        run = self._common_request(parameters, context)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        heatmap_out = self.parameterAsOutputLayer(parameters, self.OUTPUT_HEATMAP, context)
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context)
        work_dir = tempfile.mkdtemp(prefix="dgtrs_geo_")
        run.queries = [query]
        run.options.update(threshold=threshold, out_dir=work_dir, outputs=["heatmap", "polygons"])
        try:
            result = self._run("localize", run, feedback)["results"][0]
            feedback.pushInfo(
                tr("Best window cosine {:.4f} at {}", result["score_max"], result.get("best"))
            )
            _copy_raster(result_path(result, "heatmap"), heatmap_out)
            sink, sink_id = self._polygons_sink(
                parameters, context, layer.crs(), result_path(result, "polygons")
            )
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        record = history.new_record(
            query,
            scales=run.options["scales"],
            scale_unit=run.options["scale_unit"],
            model=run.model,
            threshold=threshold,
            score_max=result.get("score_max"),
            score_min=result.get("score_min"),
            normalise=result.get("normalise", "minmax"),
        )
        style_on_load(context, heatmap_out, "heatmap", record)
        style_on_load(context, sink_id, "polygons", record)
        return {self.OUTPUT_HEATMAP: heatmap_out, self.OUTPUT_POLYGONS: sink_id}

    def _polygons_sink(self, parameters, context, crs, path: Optional[str]):  # noqa: ANN202
        source = QgsVectorLayer(path, "polygons", "ogr") if path else None
        if source is not None and source.isValid():
            fields, wkb = source.fields(), source.wkbType()
        else:
            source = None
            fields, wkb = _polygon_fields(), QgsWkbTypes.Type.MultiPolygon
        sink, sink_id = self.parameterAsSink(
            parameters, self.OUTPUT_POLYGONS, context, fields, wkb, crs
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT_POLYGONS))
        if source is not None:
            for feature in source.getFeatures():
                sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
        return sink, sink_id


def _polygon_fields() -> QgsFields:
    """Return the polygon attributes, for an empty output when nothing scored above the threshold."""
    fields = QgsFields()
    fields.append(QgsField("query", QVariant.String))
    for name in ("score_max", "score_mean", "area"):
        fields.append(QgsField(name, QVariant.Double))
    return fields


def _copy_raster(source: str, target: str) -> None:
    """Copy the worker's GeoTIFF to the algorithm's output (written atomically)."""
    if not target.lower().endswith((".tif", ".tiff")):
        raise QgsProcessingException(tr("The heatmap is a GeoTIFF: give its output a .tif name"))
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    partial = target + ".partial"
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def algorithms() -> List[QgsProcessingAlgorithm]:
    """Return one instance of each algorithm."""
    from .catalog_algorithms import catalog_algorithms

    return [BuildIndexAlgorithm(), LocalizeAlgorithm(), *catalog_algorithms()]
