"""The backend process the QGIS plugin talks to: JSON lines over stdin and stdout.

Start it with ``python -m dgtrs_geo.worker`` (or ``dgtrs-geo worker``). It keeps models and
embedding indexes in memory between requests, so only the first query on a raster pays for
loading the model and encoding the windows.

Protocol. Each request is one line ``{"id": "7", "op": "localize", "params": {...}}``. Each reply
is one line carrying the request's ``id`` and an ``event``:

- ``{"event": "progress", "fraction": 0.4, "message": "encoded 40/100 windows"}`` (jobs only),
- ``{"event": "result", "result": {...}}`` ends the request,
- ``{"event": "error", "error": {"type": "ValueError", "message": "..."}}`` ends the request;
  ``type`` is ``"Cancelled"`` for a cancelled job, ``"BadRequest"`` for a malformed line.

On start the worker writes ``{"id": null, "event": "ready", "result": {...}}``. Operations:

- ``ping``: answers at once, even while a job runs (liveness).
- ``diagnostics``: interpreter, versions, torch device, model cache, what is warm.
- ``count_tokens`` ``{text, model?}``: CLIP BPE tokens incl. start/end, and the context length.
- ``index`` ``{raster, model, device?, bands?, scales?, scale_unit?, extent?, index_dir?}``:
  build (or reuse) the embedding index of a raster (a job). ``extent`` is
  ``[minx, miny, maxx, maxy]`` in the raster's CRS; ``scales`` are window sizes in
  ``scale_unit`` (``"px"`` or ``"m"``). Result: ``{index, windows, model_id, warm}``.
- ``localize`` ``{raster, queries, model, output_dir, device?, bands?, scales?, scale_unit?,
  extent?, threshold?, index_dir?}``: a heatmap GeoTIFF and polygons GeoPackage per query, in
  ``output_dir`` (a job). Result: ``{model_id, index_warm, windows, results: [{query, heatmap,
  polygons, polygon_count, best, score_max, threshold, crs}]}``.
- ``cancel`` ``{target}``: stop the job with id ``target`` (queued or running).
- ``shutdown``: cancel everything and exit.

Jobs run one at a time on a job thread; the reading loop stays free to answer ``ping``,
``cancel`` and ``count_tokens`` within milliseconds. Any failure is reported as an ``error``
event; the process itself only ends on ``shutdown`` or when stdin closes.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import platform
import queue
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import __version__

__all__ = ["Worker", "main"]

#: Models kept in memory at once; the least recently used one is dropped first.
MAX_MODELS = 2
#: Embedding indexes kept in memory at once.
MAX_INDEXES = 8
#: Context length reported when no model is loaded yet (DGTRS-CLIP's).
DEFAULT_CONTEXT_LENGTH = 248


class BadRequest(ValueError):
    """A request line that is not valid JSON or misses a field."""


@dataclass
class _Job:
    id: str
    op: str
    params: dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)


class Worker:
    """Serve requests read from ``lines`` and write events to ``out``.

    Args:
        out: text stream for protocol lines (the real stdout, never redirected).

    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._out_lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._queued: dict[str, _Job] = {}
        self._current: _Job | None = None
        self._state_lock = threading.Lock()
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._indexes: OrderedDict[tuple, Any] = OrderedDict()
        self._tokenizer = None
        self._thread = threading.Thread(target=self._run_jobs, name="dgtrs-geo-job", daemon=True)

    # --- output ---------------------------------------------------------------------------------

    def emit(self, request_id: str | None, event: str, **payload: Any) -> None:
        """Write one protocol line (thread-safe)."""
        line = json.dumps({"id": request_id, "event": event, **payload}, default=str)
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

    def _error(self, request_id: str | None, error: BaseException) -> None:
        from .localization.errors import Cancelled

        kind = "Cancelled" if isinstance(error, Cancelled) else type(error).__name__
        message = str(error) or kind
        if not isinstance(error, (Cancelled, BadRequest, ValueError, FileNotFoundError, KeyError)):
            # Unexpected failures carry their traceback to stderr, where the plugin's log shows it.
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        self.emit(request_id, "error", error={"type": kind, "message": message})

    # --- main loop ------------------------------------------------------------------------------

    def serve(self, lines: Iterable[str]) -> int:
        """Answer requests until ``shutdown`` or the end of ``lines``; return the exit code."""
        self._thread.start()
        self.emit(None, "ready", result=self._hello())
        try:
            for line in lines:
                if not line.strip():
                    continue
                if not self._handle_line(line):
                    break
        finally:
            self._stop()
        return 0

    def _handle_line(self, line: str) -> bool:
        request_id = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or "op" not in request:
                raise BadRequest('a request is a JSON object with "id", "op" and "params"')
            request_id = None if request.get("id") is None else str(request["id"])
            op = str(request["op"])
            params = request.get("params") or {}
            if not isinstance(params, dict):
                raise BadRequest('"params" must be a JSON object')
            match op:
                case "shutdown":
                    self.emit(request_id, "result", result={"stopped": True})
                    return False
                case "ping":
                    self.emit(request_id, "result", result=self._hello())
                case "diagnostics":
                    self.emit(request_id, "result", result=self.diagnostics())
                case "count_tokens":
                    if not isinstance(params.get("text"), str):
                        raise BadRequest('"count_tokens" needs a "text" string')
                    result = self.count_tokens(params["text"], params.get("model"))
                    self.emit(request_id, "result", result=result)
                case "cancel":
                    self.emit(
                        request_id,
                        "result",
                        result={"cancelled": self.cancel(params.get("target"))},
                    )
                case "index" | "localize":
                    if request_id is None:
                        raise BadRequest(f'a "{op}" request needs an "id"')
                    job = _Job(request_id, op, params)
                    with self._state_lock:
                        self._queued[request_id] = job
                    self._jobs.put(job)
                case _:
                    raise BadRequest(
                        f"unknown op {op!r}; expected ping, diagnostics, count_tokens, index, "
                        "localize, cancel or shutdown"
                    )
        except json.JSONDecodeError as error:
            self._error(request_id, BadRequest(f"request is not JSON: {error}"))
        except Exception as error:  # noqa: BLE001 - every failure becomes an error event
            self._error(request_id, error)
        return True

    def cancel(self, target: object) -> bool:
        """Cancel the job ``target`` if it is queued or running; return whether one was found."""
        with self._state_lock:
            job = self._queued.get(str(target))
            if job is None and self._current is not None and self._current.id == str(target):
                job = self._current
        if job is None:
            return False
        job.cancel.set()
        return True

    def _stop(self) -> None:
        with self._state_lock:
            for job in self._queued.values():
                job.cancel.set()
            if self._current is not None:
                self._current.cancel.set()
        self._jobs.put(None)
        self._thread.join(timeout=5)

    # --- jobs -----------------------------------------------------------------------------------

    def _run_jobs(self) -> None:
        from .localization.errors import Cancelled

        while (job := self._jobs.get()) is not None:
            with self._state_lock:
                self._queued.pop(job.id, None)
                self._current = job
            try:
                if job.cancel.is_set():
                    raise Cancelled(f"{job.op} cancelled before it started")
                started = time.perf_counter()
                handler = self.localize if job.op == "localize" else self.index

                def progress(fraction: float, message: str, job_id: str = job.id) -> None:
                    self.emit(job_id, "progress", fraction=float(fraction), message=str(message))

                try:
                    call = inspect.signature(handler).bind(
                        cancel=job.cancel, progress=progress, **job.params
                    )
                except TypeError as error:
                    raise BadRequest(f"bad params for {job.op!r}: {error}") from None
                result = handler(*call.args, **call.kwargs)
                result["seconds"] = round(time.perf_counter() - started, 4)
                self.emit(job.id, "result", result=result)
            except BaseException as error:  # noqa: BLE001 - a job never takes the worker down
                self._error(job.id, error)
            finally:
                with self._state_lock:
                    self._current = None

    # --- operations -----------------------------------------------------------------------------

    def _hello(self) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid(), "python": sys.executable}

    def diagnostics(self) -> dict[str, Any]:
        """Describe the interpreter, versions, torch device, model cache and what is warm."""
        import torch

        from .models.registry import cache_dir

        cuda = torch.cuda.is_available()
        return {
            **self._hello(),
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda_available": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "mps_available": bool(getattr(torch.backends, "mps", None))
            and torch.backends.mps.is_available(),
            "model_cache": str(cache_dir()),
            "models_loaded": [f"{source} ({device})" for source, device in self._models],
            "indexes_warm": len(self._indexes),
        }

    def count_tokens(self, text: str, model: str | None = None) -> dict[str, Any]:
        """Count CLIP BPE tokens of ``text`` (start and end included) and give the context length.

        A loaded model counts with its own tokenizer; before any is loaded, open_clip's CLIP BPE
        (the tokenizer of every model this project serves) counts against 248 tokens.
        """
        for (source, _device), loaded in reversed(list(self._models.items())):
            if model is None or source == model:
                return {"count": loaded.count_tokens(text), "context_length": loaded.context_length}
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(
                "ViT-B-16", context_length=DEFAULT_CONTEXT_LENGTH
            )
        count = len(self._tokenizer.encode(text)) + 2
        return {"count": count, "context_length": DEFAULT_CONTEXT_LENGTH}

    def model(self, source: str, device: str = "auto") -> Any:
        """Return the model ``source`` on ``device``, loading it on first use (kept warm)."""
        from .models import load_model

        key = (str(source), str(device))
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        loaded = load_model(source, device=device)
        self._models[key] = loaded
        while len(self._models) > MAX_MODELS:
            self._models.popitem(last=False)
        return loaded

    def _index(
        self,
        raster: str,
        model: Any,
        scales: list[float] | None,
        scale_unit: str,
        bands: list[int] | None,
        extent: list[float] | None,
        index_dir: str | None,
        progress: Callable[[float, str], None],
        cancel: threading.Event,
    ) -> tuple[Any, bool]:
        """Return the embedding index (kept warm here) and whether it was already in memory."""
        from .localization import REFERENCE_SCALES, build_index

        path = Path(raster).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"raster not found: {path}")
        stat = path.stat()
        scales = tuple(float(s) for s in (scales or REFERENCE_SCALES))
        key = (
            str(path),
            stat.st_mtime_ns,
            stat.st_size,
            model.model_id,
            scales,
            scale_unit,
            tuple(bands or ()),
            tuple(extent or ()),
            str(index_dir or ""),
        )
        if key in self._indexes:
            self._indexes.move_to_end(key)
            progress(
                1.0, f"embedding index of {path.name} is warm ({len(self._indexes[key])} windows)"
            )
            return self._indexes[key], True
        index = build_index(
            path,
            model,
            scales=scales,
            scale_unit=scale_unit,
            bands=bands,
            aoi=extent,
            index_dir=index_dir,
            progress=progress,
            cancel=cancel,
        )
        self._indexes[key] = index
        while len(self._indexes) > MAX_INDEXES:
            self._indexes.popitem(last=False)
        return index, False

    def index(
        self,
        raster: str,
        model: str,
        device: str = "auto",
        bands: list[int] | None = None,
        scales: list[float] | None = None,
        scale_unit: str = "px",
        extent: list[float] | None = None,
        index_dir: str | None = None,
        *,
        progress: Callable[[float, str], None],
        cancel: threading.Event,
    ) -> dict[str, Any]:
        """Build (or reuse) the embedding index of ``raster``; see the module docstring."""
        progress(0.0, f"loading model {model}")
        loaded = self.model(model, device)
        index, warm = self._index(
            raster, loaded, scales, scale_unit, bands, extent, index_dir, progress, cancel
        )
        return {
            "index": str(index.path) if getattr(index, "path", None) else "",
            "windows": len(index),
            "model_id": loaded.model_id,
            "warm": warm,
        }

    def localize(
        self,
        raster: str,
        queries: list[str],
        model: str,
        output_dir: str,
        device: str = "auto",
        bands: list[int] | None = None,
        scales: list[float] | None = None,
        scale_unit: str = "px",
        extent: list[float] | None = None,
        threshold: float | None = None,
        index_dir: str | None = None,
        *,
        progress: Callable[[float, str], None],
        cancel: threading.Event,
    ) -> dict[str, Any]:
        """Heatmap and polygons of each query on ``raster``; see the module docstring."""
        from .localization import REFERENCE_SCALES, localize

        if isinstance(queries, str):
            queries = [queries]
        progress(0.0, f"loading model {model}")
        loaded = self.model(model, device)
        index, warm = self._index(
            raster,
            loaded,
            scales,
            scale_unit,
            bands,
            extent,
            index_dir,
            lambda fraction, message: progress(0.9 * fraction, message),
            cancel,
        )
        results = localize(
            Path(raster).expanduser().resolve(),
            queries,
            loaded,
            out_dir=output_dir,
            outputs=("heatmap", "polygons"),
            scales=tuple(float(s) for s in (scales or REFERENCE_SCALES)),
            scale_unit=scale_unit,
            bands=bands,
            aoi=extent,
            threshold=threshold,
            index=index,
            progress=lambda fraction, message: progress(0.9 + 0.1 * fraction, message),
            cancel=cancel,
        )
        return {
            "model_id": loaded.model_id,
            "index_warm": warm,
            "windows": len(index),
            "results": [
                {
                    "query": result.query,
                    "heatmap": str(result.paths["heatmap"]),
                    "polygons": str(result.paths["polygons"]),
                    "polygon_count": len(result.polygons),
                    "best": list(result.best),
                    "score_max": result.score_max,
                    "threshold": result.threshold,
                    "crs": result.crs.to_wkt() if result.crs is not None else None,
                }
                for result in results
            ],
        }


def main(argv: list[str] | None = None) -> int:
    """Run the worker on this process's stdin and stdout; return the exit code."""
    del argv
    try:
        # Fail before "ready" when the environment is broken, so the plugin can say so at once.
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except ImportError as error:
        print(
            f"dgtrs-geo worker: this environment cannot run the engine ({error}). Repair it with "
            f"'{sys.executable} -m pip install --upgrade dgtrs-geo'.",
            file=sys.stderr,
        )
        return 3
    # Keep the protocol stream private: anything else printing to stdout (a library, a stray
    # print) would corrupt it, so fd 1 is pointed at stderr and only ``protocol`` writes lines.
    protocol = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), encoding="utf-8", line_buffering=True)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    return Worker(protocol).serve(stdin)


if __name__ == "__main__":
    sys.exit(main())
