"""The worker's catalog operations: build a catalog, search it, localize one of its scenes.

:mod:`dgtrs_geo.worker` parses these requests with :func:`parse_catalog_job` and runs them on
its job thread with :func:`run_catalog_job`; the model comes from the worker's sessions, so a
model loaded for ``localize`` serves the catalog too. Request params (see the worker's docstring):

- ``catalog_build`` ``{sources, out, model, options?}``: ``options`` holds ``scales``,
  ``scale_unit``, ``bands``, ``stretch``, ``min_valid``, ``batch_size``, ``num_workers``,
  ``device``, ``asset`` and ``date_from``.
- ``catalog_search`` ``{catalog, queries, model?, options?}``: ``options`` holds ``top``,
  ``bbox``, ``bbox_crs``, ``date``, ``min_distance``, ``out_dir`` and ``device``.
- ``catalog_localize`` ``{catalog, scene, queries, model?, out_dir?, options?}``: ``options``
  holds the scoring fields of ``LocalizationOptions`` (``threshold``, ``outputs``...). Result:
  ``catalog``, ``scene``, ``href``, ``model_id``, ``windows``, ``scales`` (the scene's window
  sizes in pixels, as it was indexed) and ``results`` (each a ``LocalizationResult`` JSON with
  its ``heatmap`` and ``polygons`` paths).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled, InputError
from .worker import BadRequest

__all__ = ["CATALOG_OPS", "CatalogRequest", "parse_catalog_job", "run_catalog_job"]

#: The worker operations this module answers.
CATALOG_OPS = ("catalog_build", "catalog_search", "catalog_localize")

#: Progress callback of a job: fraction, message, stage.
ProgressFn = Callable[[float, str, str], None]
#: The worker's session of a model: ``(source, device, progress) -> Localizer``.
SessionFn = Callable[[str, str, ProgressFn], Any]

#: Options each operation takes, with their defaults.
_OPTIONS: dict[str, dict[str, Any]] = {
    "catalog_build": {
        "scales": None,
        "scale_unit": None,
        "bands": None,
        "stretch": None,
        "min_valid": None,
        "batch_size": None,
        "num_workers": None,
        "device": "auto",
        "asset": "visual",
        "date_from": None,
    },
    "catalog_search": {
        "top": 10,
        "bbox": None,
        "bbox_crs": "EPSG:4326",
        "date": None,
        "min_distance": None,
        "out_dir": None,
        "device": "auto",
    },
}
#: ``LocalizationOptions`` fields a scene's localization may change (the rest are the catalog's).
_LOCALIZE_FIELDS = ("threshold", "outputs", "normalise", "smooth", "cell", "device", "aoi")


@dataclass
class CatalogRequest:
    """A catalog job's parameters, parsed.

    Attributes:
        op: one of :data:`CATALOG_OPS`.
        catalog: the catalog folder (``out`` of a build).
        model: registry name or checkpoint path (``None``: the catalog's own).
        queries: the texts (search, localize).
        options: the operation's options, defaults filled in.
        sources: what a build indexes.
        scene: the scene id a localization maps.
        deprecations: always empty (the worker reports them for every job).

    """

    op: str
    catalog: str
    model: str | None = None
    queries: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    scene: str = ""
    deprecations: list[str] = field(default_factory=list)


def _texts(value: Any, name: str) -> list[str]:
    """A text or a list of texts, as a list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BadRequest(f'"{name}" must be a text or a list of texts')
    return list(items)


def _options(op: str, given: Any) -> dict[str, Any]:
    """The operation's options: ``given`` over the defaults; unknown names are refused."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise InputError(f"{op} options must be a JSON object, got {type(given).__name__}")
    known = _OPTIONS.get(op, dict.fromkeys(_LOCALIZE_FIELDS))
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise InputError(
            f"unknown {op} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if op == "catalog_localize":
        return dict(given)  # the catalog's own options fill in the rest
    return {**known, **given}


def parse_catalog_job(op: str, params: dict[str, Any]) -> CatalogRequest:
    """Parse the params of a catalog request.

    Raises:
        BadRequest: if a required field is missing or of the wrong kind.
        InputError: if an option is unknown.

    """
    needed = {
        "catalog_build": ("sources", "out", "model"),
        "catalog_search": ("catalog", "queries"),
        "catalog_localize": ("catalog", "scene", "queries"),
    }[op]
    missing = [name for name in needed if params.get(name) in (None, "", [])]
    if missing:
        raise BadRequest(f'a "{op}" request needs {", ".join(repr(m) for m in missing)} in params')
    options = dict(params.get("options") or {})
    if op == "catalog_localize" and params.get("out_dir"):
        options.setdefault("out_dir", str(params["out_dir"]))
    out_dir = options.pop("out_dir", None) if op == "catalog_localize" else None
    parsed = _options(op, options)
    if out_dir is not None:
        parsed["out_dir"] = out_dir
    model = params.get("model")
    return CatalogRequest(
        op=op,
        catalog=str(params.get("catalog") or params.get("out")),
        model=str(model) if model not in (None, "") else None,
        queries=_texts(params.get("queries", []), "queries"),
        options=parsed,
        sources=_texts(params.get("sources", []), "sources"),
        scene=str(params.get("scene") or ""),
    )


def run_catalog_job(
    request: CatalogRequest,
    session: SessionFn,
    *,
    progress: ProgressFn,
    cancel: threading.Event,
) -> dict[str, Any]:
    """Run a parsed catalog request; return its result (see the module docstring)."""
    handler = {
        "catalog_build": _build,
        "catalog_search": _search,
        "catalog_localize": _localize,
    }[request.op]
    return handler(request, session, progress, cancel)


def _catalog_model(request: CatalogRequest, catalog: Any) -> str:
    """The model to use: the request's, else the one the catalog records."""
    if request.model is not None:
        return request.model
    recorded = catalog.store.meta.get("model")
    if recorded is None:
        catalog.model()  # raises ModelError, saying the catalog records no model
    return str(recorded)


def _build(
    request: CatalogRequest, session: SessionFn, progress: ProgressFn, cancel: threading.Event
) -> dict[str, Any]:
    from .catalog import Catalog

    del session  # the catalog loads the model by name, so that catalog.json records where from
    options = dict(request.options)
    asset, date_from = options.pop("asset"), options.pop("date_from")
    keywords = {k: (tuple(v) if k == "scales" else v) for k, v in options.items() if v is not None}

    def report(fraction: float, message: str) -> None:
        # The engine checks no event of ours: stopping here raises through Lightning, and
        # every scene finished so far keeps its (atomically written) part.
        if cancel.is_set():
            raise Cancelled("catalog build cancelled: finished scenes are kept; run it again")
        progress(fraction, message, "encoding")

    report(0.0, f"indexing {len(request.sources)} source(s) into {request.catalog}")
    catalog = Catalog.build(
        request.sources,
        request.model,
        request.catalog,
        asset=asset,
        date_from=date_from,
        progress=report,
        **keywords,
    )
    summary = catalog.summary
    finalized = summary.finalized
    return {
        "catalog": str(catalog.store.root),
        "model_id": catalog.store.model_id,
        "indexed": summary.count("indexed"),
        "unchanged": summary.count("unchanged"),
        "scenes": finalized.scenes if finalized else 0,
        "windows": finalized.rows if finalized else 0,
        "failed": [{"source": f.source, "error": f.error} for f in summary.failures],
        "ok": summary.ok,
        "report": summary.report(),
    }


def _row(record: dict[str, Any]) -> dict[str, Any]:
    """One search hit as JSON: its columns, the date in ISO 8601, the geometry as WKT."""
    geometry = record.pop("geometry")
    date = record.get("date")
    record["date"] = None if date is None or date != date else date.isoformat()
    for key, value in record.items():
        if hasattr(value, "item"):  # numpy scalars
            record[key] = value.item()
    record["wkt"] = geometry.wkt
    return record


def _search(
    request: CatalogRequest, session: SessionFn, progress: ProgressFn, cancel: threading.Event
) -> dict[str, Any]:
    from .catalog import Catalog
    from .catalog.search import write_results

    options = request.options
    catalog = Catalog.open(request.catalog)
    localizer = session(_catalog_model(request, catalog), options["device"], progress)
    progress(0.5, f"searching {len(catalog)} windows", "scoring")
    bbox = options["bbox"]
    hits = catalog.search(
        request.queries,
        top=int(options["top"]),
        model=localizer.model,
        bbox=None if bbox is None else [float(v) for v in bbox],
        bbox_crs=options["bbox_crs"],
        date=options["date"],
        min_distance=options["min_distance"],
    )
    if cancel.is_set():
        raise Cancelled("catalog search cancelled")
    out_dir = options["out_dir"] or tempfile.mkdtemp(prefix="dgtrs-geo-catalog-search-")
    progress(0.9, f"writing {len(hits)} result(s)", "writing")
    paths = write_results(hits, out_dir)
    return {
        "catalog": str(catalog.store.root),
        "model_id": localizer.model.model_id,
        "count": len(hits),
        "rows": [_row(dict(r)) for r in hits.to_dict("records")],
        "gpkg": str(paths["gpkg"]),
        "layer": "results",
        "parquet": str(paths["parquet"]),
    }


def _scene_record(catalog: Any, scene_id: str) -> Any:
    scenes = catalog.index.scenes
    found = scenes[scenes["scene_id"] == scene_id]
    if found.empty:
        raise InputError(
            f"catalog {catalog.store.root} has no scene {scene_id!r}: take a scene id from a "
            "search result"
        )
    return found.iloc[0]


def _localize(
    request: CatalogRequest, session: SessionFn, progress: ProgressFn, cancel: threading.Event
) -> dict[str, Any]:
    from .catalog import Catalog
    from .catalog.heatmaps import localize_scene

    catalog = Catalog.open(request.catalog)
    record = _scene_record(catalog, request.scene)
    changes = dict(request.options)
    localizer = session(_catalog_model(request, catalog), changes.get("device", "auto"), progress)
    catalog.store.check(localizer.model.model_id)
    changes.setdefault("outputs", ("heatmap", "polygons"))
    changes.setdefault("out_dir", tempfile.mkdtemp(prefix="dgtrs-geo-catalog-scene-"))
    options = catalog.store.options.replace(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    )
    # The scene's window sizes, its fingerprint check and the stored rows are localize_scene's.
    results = localize_scene(
        catalog.store, record, request.queries, localizer, options, progress=progress, cancel=cancel
    )
    answers = []
    for result in results:
        answer = result.to_json()
        answer.update({k: answer["paths"].get(k) for k in ("heatmap", "polygons")})
        answers.append(answer)
    return {
        "catalog": str(catalog.store.root),
        "scene": request.scene,
        "href": str(record["href"]),
        "model_id": localizer.model.model_id,
        "index_warm": True,
        "windows": results[0].windows,
        "scales": [int(size) for size in record["scales_px"]],
        "results": answers,
    }
