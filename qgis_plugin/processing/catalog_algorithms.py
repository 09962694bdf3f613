"""Processing algorithms for catalogs: build one from imagery, search one in words.

Both send one job to the shared worker (``catalog_build``, ``catalog_search``); ``feedback``
carries its progress, and cancelling the algorithm cancels the job (a cancelled build keeps the
scenes it finished, so running it again resumes).
"""

from __future__ import annotations

import tempfile
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeatureSink,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsVectorLayer,
)

from .. import settings
from ..catalog import build_params, results_name, search_params, style_scores
from ..sources import parse_scales
from ..tools import tr
from .jobs import run_job

UNITS = ["m", "px"]
_alive: List["StyleResults"] = []
_KEEP = 64


class StyleResults(QgsProcessingLayerPostProcessorInterface):
    """Colour a loaded search result by score and name it after the query."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def postProcessLayer(  # noqa: N802
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Style the layer (QGIS calls this on the main thread)."""
        if isinstance(layer, QgsVectorLayer):
            style_scores(layer)
            layer.setName(self.name)


class _CatalogAlgorithm(QgsProcessingAlgorithm):
    MODEL = "MODEL"
    DEVICE = "DEVICE"

    def group(self) -> str:  # noqa: D102
        return tr("Catalogs")

    def groupId(self) -> str:  # noqa: D102, N802
        return "catalogs"

    def createInstance(self) -> "QgsProcessingAlgorithm":  # noqa: D102, N802
        return type(self)()

    def _add_device(self) -> None:
        self.addParameter(
            QgsProcessingParameterEnum(self.DEVICE, tr("Device"), settings.DEVICES, defaultValue=0)
        )

    def _device(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> str:
        return settings.DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]


class BuildCatalogAlgorithm(_CatalogAlgorithm):
    """Index a folder, a VRT mosaic or a STAC file into a catalog folder."""

    FOLDER = "FOLDER"
    FILE = "FILE"
    SCALES = "SCALES"
    SCALE_UNIT = "SCALE_UNIT"
    ASSET = "ASSET"
    DATE_FROM = "DATE_FROM"
    OUTPUT = "OUTPUT"
    SCENES = "SCENES"
    WINDOWS = "WINDOWS"
    FAILED = "FAILED"

    def name(self) -> str:  # noqa: D102
        return "buildcatalog"

    def displayName(self) -> str:  # noqa: D102, N802
        return tr("Build catalog")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return tr(
            "Embeds the windows of every raster of a folder (searched recursively), a GDAL VRT "
            "mosaic or a STAC catalog / ItemCollection JSON into a catalog folder "
            "(NAME.dgtrs-catalog), searchable in words with Search catalog. Running it again "
            "indexes only new or changed scenes; a cancelled run keeps the scenes it finished. "
            "Scenes that cannot be read are listed in the log and do not stop the others."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: D102, N802
        self.addParameter(
            QgsProcessingParameterFile(
                self.FOLDER, tr("Folder of rasters"), optional=True,
                behavior=QgsProcessingParameterFile.Behavior.Folder,
            )
        )  # fmt: skip
        self.addParameter(
            QgsProcessingParameterFile(
                self.FILE, tr("Or a VRT mosaic, STAC JSON or raster file"), optional=True,
                fileFilter=tr("VRT, STAC or raster (*.vrt *.json *.geojson *.tif *.tiff);;"
                              "All files (*)"),
            )
        )  # fmt: skip
        self.addParameter(
            QgsProcessingParameterString(
                self.MODEL, tr("Model (registry name or checkpoint path)"), settings.model()
            )
        )
        self._add_device()
        self.addParameter(
            QgsProcessingParameterString(
                self.SCALES, tr("Window sizes (default: 128, 256 and 512 m)"), "", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.SCALE_UNIT, tr("Window size unit"), UNITS, defaultValue=0
            )  # fmt: skip
        )
        self.addParameter(
            QgsProcessingParameterString(self.ASSET, tr("STAC asset key"), "visual", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.DATE_FROM,
                tr("Date from file names (regular expression, optional)"),
                "",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFolderDestination(self.OUTPUT, tr("Catalog folder"))
        )
        self.addOutput(QgsProcessingOutputNumber(self.SCENES, tr("Scenes searchable")))
        self.addOutput(QgsProcessingOutputNumber(self.WINDOWS, tr("Windows searchable")))
        self.addOutput(QgsProcessingOutputNumber(self.FAILED, tr("Sources that failed")))

    def processAlgorithm(  # noqa: D102, N802
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        sources = [
            self.parameterAsFile(parameters, name, context) for name in (self.FOLDER, self.FILE)
        ]
        sources = [source for source in sources if source]
        if not sources:
            raise QgsProcessingException(tr("Choose a folder of rasters, a VRT or a STAC file"))
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        try:
            scales = parse_scales(self.parameterAsString(parameters, self.SCALES, context))
        except ValueError as error:
            raise QgsProcessingException(str(error)) from error
        options = {
            "scales": scales,
            "scale_unit": UNITS[self.parameterAsEnum(parameters, self.SCALE_UNIT, context)]
            if scales else None,
            "device": self._device(parameters, context),
            "asset": self.parameterAsString(parameters, self.ASSET, context).strip(),
            "date_from": self.parameterAsString(parameters, self.DATE_FROM, context).strip(),
        }  # fmt: skip
        model = self.parameterAsString(parameters, self.MODEL, context).strip() or settings.model()
        result = run_job(
            "catalog_build", lambda _info: build_params(sources, out, model, options), feedback
        )
        feedback.pushInfo(result.get("report", ""))
        for failure in result.get("failed", []):
            feedback.reportError(tr("{}: {}", failure["source"], failure["error"]))
        return {
            self.OUTPUT: result["catalog"],
            self.SCENES: result["scenes"],
            self.WINDOWS: result["windows"],
            self.FAILED: len(result.get("failed", [])),
        }


class SearchCatalogAlgorithm(_CatalogAlgorithm):
    """The best windows across a catalog for a sentence, as a ranked polygon layer."""

    CATALOG = "CATALOG"
    QUERY = "QUERY"
    TOP = "TOP"
    EXTENT = "EXTENT"
    DATE = "DATE"
    OUTPUT = "OUTPUT"

    def name(self) -> str:  # noqa: D102
        return "searchcatalog"

    def displayName(self) -> str:  # noqa: D102, N802
        return tr("Search catalog")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return tr(
            "Finds the places across a catalog (built with Build catalog or `dgtrs-geo catalog "
            "index`) that best match a sentence: one polygon per place in EPSG:4326, ranked by "
            "score (cosine of the text and the window), with the scene, its file and its date. "
            "Overlapping windows of one place are collapsed to the best one. The model is the "
            "catalog's own unless another is given (a different model is refused)."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: D102, N802
        self.addParameter(
            QgsProcessingParameterFile(self.CATALOG, tr("Catalog folder (NAME.dgtrs-catalog)"),
                                       behavior=QgsProcessingParameterFile.Behavior.Folder)
        )  # fmt: skip
        self.addParameter(QgsProcessingParameterString(self.QUERY, tr("Query"), multiLine=True))
        self.addParameter(
            QgsProcessingParameterNumber(self.TOP, tr("Results"),
                                         QgsProcessingParameterNumber.Type.Integer,
                                         defaultValue=20, minValue=1, maxValue=10000)
        )  # fmt: skip
        self.addParameter(
            QgsProcessingParameterExtent(self.EXTENT, tr("Only within (optional)"), optional=True)
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.DATE, tr("Dates START/END, ISO 8601, '..' for open (optional)"), "",
                optional=True,
            )
        )  # fmt: skip
        self.addParameter(
            QgsProcessingParameterString(
                self.MODEL, tr("Model (default: the catalog's own)"), "", optional=True
            )
        )
        self._add_device()
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                self.OUTPUT, tr("Ranked results"), QgsProcessing.SourceType.TypeVectorPolygon
            )
        )

    def processAlgorithm(  # noqa: D102, N802
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        query = " ".join(self.parameterAsString(parameters, self.QUERY, context).split())
        if not query:
            raise QgsProcessingException(tr("Type a query: a sentence describing what to find"))
        bbox, bbox_crs = None, "EPSG:4326"
        if parameters.get(self.EXTENT):
            crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
            bbox = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
            bbox_crs = crs.authid() or crs.toWkt()
        params = search_params(
            self.parameterAsFile(parameters, self.CATALOG, context),
            [query],
            top=self.parameterAsInt(parameters, self.TOP, context),
            out_dir=tempfile.mkdtemp(prefix="dgtrs_geo_catalog_"),
            device=self._device(parameters, context),
            model=self.parameterAsString(parameters, self.MODEL, context),
            bbox=bbox,
            bbox_crs=bbox_crs,
            date=self.parameterAsString(parameters, self.DATE, context),
        )
        result = run_job("catalog_search", lambda _info: params, feedback)
        sink_id = self._copy(parameters, context, result)
        if context.willLoadLayerOnCompletion(sink_id):
            processor = StyleResults(results_name([query]))
            _alive.append(processor)  # QGIS does not keep the Python object alive
            del _alive[:-_KEEP]
            details = context.layerToLoadOnCompletionDetails(sink_id)
            details.name = processor.name
            details.setPostProcessor(processor)
        feedback.pushInfo(tr("{} result(s); GeoPackage {}", result["count"], result["gpkg"]))
        return {self.OUTPUT: sink_id}

    def _copy(self, parameters, context, result: Dict[str, Any]) -> str:  # noqa: ANN001
        """Copy the worker's GeoPackage rows, in rank order, into the algorithm's output."""
        source = QgsVectorLayer(
            "{}|layername={}".format(result["gpkg"], result.get("layer", "results")),
            "results",
            "ogr",
        )
        if not source.isValid():
            raise QgsProcessingException(tr("Cannot read the results {}", result["gpkg"]))
        sink, sink_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, source.fields(), source.wkbType(),
            QgsCoordinateReferenceSystem("EPSG:4326"),
        )  # fmt: skip
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for feature in source.getFeatures():
            sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
        return sink_id


def catalog_algorithms() -> List[QgsProcessingAlgorithm]:
    """Return one instance of each catalog algorithm."""
    return [BuildCatalogAlgorithm(), SearchCatalogAlgorithm()]
