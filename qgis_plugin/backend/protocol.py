"""The plugin's requests in the worker's format, and the worker's events read back.

The worker's request format changed once: ``index`` and ``localize`` used to take flat params
(``extent``, ``output_dir``, ``scales`` ...); now they take ``{raster, model, queries,
options}`` with ``options`` in ``LocalizationOptions`` JSON, and the ``ready`` event lists the
option names and defaults (``options``). The plugin builds one description of a run
(:class:`Run`) and :func:`worker_params` writes it in whichever format the running worker
speaks, so an engine of either generation works.

Progress events may carry a ``stage`` (``starting``, ``loading-model``, ``downloading``,
``encoding``, ``scoring``, ``writing``); for workers that send none, :func:`stage_of` infers it
from the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

#: Stages in the order a first query passes them.
STAGES = ("starting", "loading-model", "downloading", "encoding", "scoring", "writing")

#: Old-protocol names of the options that were renamed.
_OLD_NAMES = {"aoi": "extent", "out_dir": "output_dir"}
#: Options the old worker took as params (the rest it did not know).
_OLD_OPTIONS = ("device", "bands", "scales", "scale_unit", "aoi", "index_dir")
_OLD_LOCALIZE_OPTIONS = ("threshold", "out_dir")


@dataclass
class Run:
    """One ``index`` or ``localize`` request, protocol-neutral.

    Attributes:
        raster: the raster file.
        model: registry name or checkpoint path.
        queries: the sentences (``localize`` only).
        options: ``LocalizationOptions`` fields (``scales``, ``scale_unit``, ``aoi``,
            ``index_dir``, ``out_dir``, ``threshold``, ``device``, ``bands`` ...); None values
            are left to the engine's defaults.

    """

    raster: str
    model: str
    queries: List[str] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)


def new_protocol(info: Dict[str, Any]) -> bool:
    """Whether the worker whose ``ready`` result is ``info`` takes ``options`` objects."""
    return isinstance(info.get("options"), dict)


def worker_params(op: str, run: Run, info: Dict[str, Any]) -> Dict[str, Any]:
    """Return the params of an ``index`` or ``localize`` request for the running worker.

    Args:
        op: ``index`` or ``localize``.
        run: what to do.
        info: the worker's ``ready`` result.

    """
    options = {key: value for key, value in run.options.items() if value is not None}
    params: Dict[str, Any] = {"raster": run.raster, "model": run.model}
    if op == "localize":
        params["queries"] = list(run.queries)
    if new_protocol(info):
        known = info["options"]
        params["options"] = {key: value for key, value in options.items() if key in known}
        return params
    names = _OLD_OPTIONS + (_OLD_LOCALIZE_OPTIONS if op == "localize" else ())
    for key in names:
        if key in options:
            params[_OLD_NAMES.get(key, key)] = options[key]
    return params


def stage_of(event: Dict[str, Any]) -> str:
    """Return a progress event's stage, inferred from its message when it carries none."""
    stage = event.get("stage")
    if isinstance(stage, str) and stage:
        return stage
    message = str(event.get("message", "")).lower()
    if message.startswith("loading model"):
        return "loading-model"
    if "download" in message:
        return "downloading"
    if message.startswith(("encod", "reused", "embedding index")):
        return "encoding"
    if message.startswith("scoring"):
        return "scoring"
    if message.startswith("writing"):
        return "writing"
    return ""


def result_path(result: Dict[str, Any], kind: str) -> Optional[str]:
    """Return a localize result's ``heatmap`` or ``polygons`` file, in either result format."""
    path = result.get(kind) or (result.get("paths") or {}).get(kind)
    return str(path) if path else None
