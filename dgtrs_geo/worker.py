"""The backend process the QGIS plugin talks to: JSON lines over stdin and stdout.

Start it with ``python -m dgtrs_geo.worker`` (or ``dgtrs-geo worker``). It is an adapter around
:class:`~dgtrs_geo.localization.session.Localizer` sessions, one per loaded model: the sessions
keep embedding indexes in memory, so only the first query on a raster pays for loading the model
and encoding the windows.

Protocol (version 2). Each request is one line ``{"id": "7", "op": "localize", "params": {...}}``.
Each reply is one line carrying the request's ``id`` and an ``event``:

- ``{"event": "progress", "fraction": 0.4, "message": "encoded 40/100 windows", "stage":
  "encoding"}`` (jobs only); ``stage`` is ``starting``, ``downloading`` (a named model's
  weights, the message in %), ``loading-model``, ``encoding``,
  ``scoring`` or ``writing``,
- ``{"event": "result", "result": {...}}`` ends the request,
- ``{"event": "error", "error": {"type": "InputError", "message": "..."}}`` ends the request;
  ``type`` is the :class:`~dgtrs_geo.errors.DgtrsGeoError` subclass for a failure the user can
  fix (``InputError``, ``ModelError``, ``EmbeddingIndexError``, ``IndexMismatchError``,
  ``OutputError``, ``Cancelled`` for a cancelled job), ``BadRequest`` for a malformed line, and
  the exception's class name for a bug (its traceback goes to stderr). A subclass of those
  families defined elsewhere (``CheckpointNotFoundError``...) is reported under its family, with
  its own name in ``class``.

On start the worker writes ``{"id": null, "event": "ready", "result": {"version", "protocol",
"pid", "python", "context_length", "options"}}``; ``context_length`` is the text context of
DGTRS-CLIP (248 tokens, :data:`dgtrs_geo.tokens.DGTRS_CONTEXT_LENGTH`), against which a client
counts before any model is loaded; ``options`` is ``LocalizationOptions().to_json()``, every
option with its default: the schema a client builds requests from. Operations:

- ``ping``: answers at once, even while a job runs (liveness), with the ``ready`` result.
- ``diagnostics``: interpreter, versions, torch device, model cache, what is warm.
- ``count_tokens`` ``{text, model?}``: CLIP BPE tokens incl. start/end, and the context length.
- ``index`` ``{raster, model, options?}``: build (or reuse) the embedding index of a raster (a
  job). Result: ``{index, windows, model_id, warm}``.
- ``localize`` ``{raster, queries, model, options?}``: heatmap, polygons... per query, written
  to ``options.out_dir`` (a job). Result: ``{model_id, index_warm, windows, results: [...]}``,
  one :meth:`LocalizationResult.to_json() <dgtrs_geo.localization.session.LocalizationResult.to_json>`
  per query (plus ``heatmap`` and ``polygons``: their file paths, as protocol 1 gave them).
- ``catalog_build`` ``{sources, out, model, options?}``: index files, folders, VRT mosaics and
  STAC JSON into a catalog folder (a job; cancel keeps the scenes finished so far). Result:
  ``{catalog, model_id, indexed, unchanged, scenes, windows, failed: [{source, error}], ok,
  report}``.
- ``catalog_search`` ``{catalog, queries, model?, options?: {top, bbox, bbox_crs, date,
  min_distance, out_dir, device}}``: the best windows across the catalog (a job). Result:
  ``{catalog, model_id, count, rows: [...], gpkg, layer, parquet}``; each row has ``query``,
  ``rank``, ``score``, ``scene``, ``href``, ``date`` (ISO 8601 or null), ``item_id``, the window
  in scene pixels, ``size_m`` and ``wkt`` (EPSG:4326); ``gpkg`` holds the same rows.
- ``catalog_localize`` ``{catalog, scene, queries, model?, out_dir?, options?}``: heatmap and
  polygons of one catalog scene from its stored embeddings, no window encoded again (a job).
  Result: as ``localize``'s, plus ``scene`` and ``href``. ``model`` left out: the catalog's.
  See :mod:`dgtrs_geo.worker_catalog`.
- ``cancel`` ``{target}``: stop the job with id ``target`` (queued or running).
- ``shutdown``: cancel everything and exit.

``options`` is a :class:`~dgtrs_geo.localization.options.LocalizationOptions` JSON object
(``scales``, ``aoi``, ``out_dir``, ``threshold``, ``device``...); keys left out take their
defaults, unknown keys are an ``InputError`` naming them. Protocol 1 requests, with options
flat in ``params`` and the names ``extent`` (now ``aoi``) and ``output_dir`` (now ``out_dir``),
still work until 0.3 (their ``outputs`` default to heatmap and polygons, as they did); their
result lists what to rename under ``deprecations``.

Jobs run one at a time on a job thread; the reading loop stays free to answer ``ping``,
``cancel`` and ``count_tokens`` within milliseconds. Any failure is reported as an ``error``
event; the process itself only ends on ``shutdown``, when stdin closes, or on SIGTERM (exit 143,
after cancelling the running job so it leaves no partial file).
"""

from __future__ import annotations

import io
import json
import os
import platform
import queue
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from . import __version__
from .tokens import DGTRS_CONTEXT_LENGTH

if TYPE_CHECKING:
    from .localization.options import LocalizationOptions

__all__ = ["PROTOCOL", "Worker", "main"]

#: Version of the request and event format described in the module docstring.
PROTOCOL = 2
#: Models (each with its session and warm indexes) kept in memory at once, least recent dropped.
MAX_MODELS = 2
#: Protocol 1 names of options given flat in ``params``: old -> new.
RENAMED_PARAMS = {"extent": "aoi", "output_dir": "out_dir"}

#: Progress callback of a job: fraction, message, stage.
ProgressFn = Callable[[float, str, str], None]


class BadRequest(ValueError):
    """A request line that is not valid JSON or misses a field."""


@dataclass
class _Request:
    """A job's parameters, parsed: raster, model, queries (localize) and options."""

    raster: str
    model: str
    queries: list[str]
    options: LocalizationOptions
    deprecations: list[str]


@dataclass
class _Job:
    id: str
    op: str
    request: Any  # _Request, or a worker_catalog.CatalogRequest for the catalog ops
    cancel: threading.Event = field(default_factory=threading.Event)


def parse_job(op: str, params: dict[str, Any]) -> _Request:
    """Parse the params of an ``index`` or ``localize`` request, protocol 2 or 1.

    Raises:
        BadRequest: if ``raster``, ``model`` or (localize) ``queries`` is missing, or options are
            given both in ``options`` and flat.
        InputError: if an option is unknown or of the wrong kind.

    """
    from .localization.options import LocalizationOptions

    params = dict(params)
    needed = ("raster", "model", "queries") if op == "localize" else ("raster", "model")
    missing = [name for name in needed if params.get(name) in (None, "")]
    if missing:
        raise BadRequest(f'a "{op}" request needs {", ".join(repr(m) for m in missing)} in params')
    raster, model = str(params.pop("raster")), str(params.pop("model"))
    queries = params.pop("queries", [])
    if not isinstance(queries, str | list):
        raise BadRequest('"queries" must be a text or a list of texts')
    queries = [queries] if isinstance(queries, str) else queries
    options = params.pop("options", None)
    deprecations = []
    if options is None:
        # Protocol 1: options flat in params, two of them under old names.
        if params:
            deprecations.append("options given flat in params: send them as params.options")
        for old, new in RENAMED_PARAMS.items():
            if old in params:
                deprecations.append(f"params.{old}: send it as params.options.{new}")
                params[new] = params.pop(old)
        if op == "localize":
            params.setdefault("outputs", ["heatmap", "polygons"])
        options = params
    elif params:
        raise BadRequest(
            f"options given both in params.options and flat in params ({', '.join(sorted(params))})"
        )
    for note in deprecations:
        warnings.warn(f"worker request: {note} (protocol 1, removed in 0.3)", DeprecationWarning, 2)
    return _Request(raster, model, queries, LocalizationOptions.from_json(options), deprecations)


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
        self._sessions: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._thread = threading.Thread(target=self._run_jobs, name="dgtrs-geo-job", daemon=True)

    # --- output ---------------------------------------------------------------------------------

    def emit(self, request_id: str | None, event: str, **payload: Any) -> None:
        """Write one protocol line (thread-safe)."""
        line = json.dumps({"id": request_id, "event": event, **payload}, default=str)
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

    def _error(self, request_id: str | None, error: BaseException) -> None:
        from . import errors

        family = type(error).__name__
        if isinstance(error, errors.DgtrsGeoError):
            # The most specific class of dgtrs_geo.errors: a fixed set a client can match on.
            family = next(
                c.__name__ for c in type(error).__mro__ if c.__module__ == errors.__name__
            )
        elif not isinstance(error, BadRequest):
            # A bug: its traceback goes to stderr, where the plugin's log shows it.
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        detail = {"type": family, "message": str(error) or family}
        if family != type(error).__name__:
            detail["class"] = type(error).__name__
        self.emit(request_id, "error", error=detail)

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
                    # Parsed here, so a malformed request is answered at once, not when its turn comes.
                    job = _Job(request_id, op, parse_job(op, params))
                    with self._state_lock:
                        self._queued[request_id] = job
                    self._jobs.put(job)
                case "catalog_build" | "catalog_search" | "catalog_localize":
                    if request_id is None:
                        raise BadRequest(f'a "{op}" request needs an "id"')
                    from .worker_catalog import parse_catalog_job

                    job = _Job(request_id, op, parse_catalog_job(op, params))
                    with self._state_lock:
                        self._queued[request_id] = job
                    self._jobs.put(job)
                case _:
                    raise BadRequest(
                        f"unknown op {op!r}; expected ping, diagnostics, count_tokens, index, "
                        "localize, catalog_build, catalog_search, catalog_localize, cancel or "
                        "shutdown"
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
        from .errors import Cancelled

        while (job := self._jobs.get()) is not None:
            with self._state_lock:
                self._queued.pop(job.id, None)
                self._current = job
            try:
                if job.cancel.is_set():
                    raise Cancelled(f"{job.op} cancelled before it started")
                started = time.perf_counter()

                def progress(
                    fraction: float, message: str, stage: str, job_id: str = job.id
                ) -> None:
                    self.emit(
                        job_id, "progress", fraction=float(fraction), message=str(message),
                        stage=stage,
                    )  # fmt: skip

                progress(0.0, f"{job.op} started", "starting")
                request = job.request
                handler = {"index": self.index, "localize": self.localize}.get(
                    job.op, self._catalog_job
                )
                result = handler(request, progress=progress, cancel=job.cancel)
                if request.deprecations:
                    result["deprecations"] = request.deprecations
                result["seconds"] = round(time.perf_counter() - started, 4)
                self.emit(job.id, "result", result=result)
            except BaseException as error:  # noqa: BLE001 - a job never takes the worker down
                self._error(job.id, error)
            finally:
                with self._state_lock:
                    self._current = None

    # --- operations -----------------------------------------------------------------------------

    def _hello(self) -> dict[str, Any]:
        from .localization.options import LocalizationOptions

        return {
            "version": __version__,
            "protocol": PROTOCOL,
            "pid": os.getpid(),
            "python": sys.executable,
            "context_length": DGTRS_CONTEXT_LENGTH,
            "options": LocalizationOptions().to_json(),
        }

    def diagnostics(self) -> dict[str, Any]:
        """Describe the interpreter, versions, torch device, model cache and what is warm."""
        import torch

        from .cache import cache_dir

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
            "model_cache": str(cache_dir("models")),
            "models_loaded": [f"{source} ({device})" for source, device in self._sessions],
            "indexes_warm": sum(s.cache_info().currsize for s in list(self._sessions.values())),
        }

    def count_tokens(self, text: str, model: str | None = None) -> dict[str, Any]:
        """Count CLIP BPE tokens of ``text`` (start and end included) and give the context length.

        Every model this project serves reads CLIP's BPE, so the count is the same for all; the
        context length is the loaded model's (``model``'s, or the most recent one), else 248.
        """
        from .tokens import count_tokens

        context_length = DGTRS_CONTEXT_LENGTH
        for (source, _device), session in reversed(list(self._sessions.items())):
            if model is None or source == model:
                context_length = int(session.model.context_length)
                break
        return {"count": count_tokens(text), "context_length": context_length}

    def session(self, source: str, device: str, progress: ProgressFn | None = None) -> Any:
        """Return the :class:`Localizer` of model ``source`` on ``device``, loading it on first use."""
        from .localization.session import Localizer

        key = (str(source), str(device))
        if key in self._sessions:
            self._sessions.move_to_end(key)
            return self._sessions[key]
        if progress is not None:
            _download_named_weights(str(source), progress)
            progress(0.0, f"loading model {source}", "loading-model")
        from .localization.options import LocalizationOptions

        session = Localizer(source, LocalizationOptions(device=device))
        self._sessions[key] = session
        while len(self._sessions) > MAX_MODELS:
            self._sessions.popitem(last=False)
        return session

    def index(
        self, request: _Request, *, progress: ProgressFn, cancel: threading.Event
    ) -> dict[str, Any]:
        """Build (or reuse) the embedding index of a raster; see the module docstring."""
        session = self.session(request.model, request.options.device, progress)
        hits = session.cache_info().hits
        index = session.index(
            request.raster, options=request.options, progress=progress, cancel=cancel
        )
        return {
            "index": str(index.path) if index.path is not None else "",
            "windows": len(index),
            "model_id": session.model.model_id,
            "warm": session.cache_info().hits > hits,
        }

    def _catalog_job(
        self, request: Any, *, progress: ProgressFn, cancel: threading.Event
    ) -> dict[str, Any]:
        """Run a catalog operation with this worker's model sessions; see the module docstring."""
        from .worker_catalog import run_catalog_job

        return run_catalog_job(request, self.session, progress=progress, cancel=cancel)

    def localize(
        self, request: _Request, *, progress: ProgressFn, cancel: threading.Event
    ) -> dict[str, Any]:
        """Heatmaps and polygons of each query on a raster; see the module docstring."""
        session = self.session(request.model, request.options.device, progress)
        hits = session.cache_info().hits
        results = session.query(
            request.raster, request.queries, options=request.options, progress=progress,
            cancel=cancel,
        )  # fmt: skip
        answers = []
        for result in results:
            answer = result.to_json()
            # Protocol 1 gave the two files at the top level; plugins of 0.1 read them there.
            answer.update({k: answer["paths"].get(k) for k in ("heatmap", "polygons")})
            answers.append(answer)
        return {
            "model_id": session.model.model_id,
            "index_warm": session.cache_info().hits > hits,
            "windows": results[0].windows,
            "results": answers,
        }


def _download_named_weights(source: str, progress: ProgressFn) -> None:
    """Download a named model's missing weights first, reporting stage ``downloading`` in %."""
    from .models.registry import REGISTRY, download_weights, weights_path

    entry = REGISTRY.get(source)
    if entry is None or weights_path(entry).is_file():
        return

    def report(done: int, total: int | None) -> None:
        if total:
            percent = 100 * done // total
            progress(done / total, f"downloading weights {percent} %", "downloading")
        else:
            progress(0.0, f"downloading weights {done / 2**20:.0f} MiB", "downloading")

    progress(0.0, f"downloading weights of {source}", "downloading")
    download_weights(entry, progress=False, report=report)


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

    def stop(signum: int, frame: object) -> None:
        # Raised in the main thread (reading stdin): serve() then cancels the running job and
        # waits for it, so its temporary files are removed before the process exits.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    return Worker(protocol).serve(stdin)


if __name__ == "__main__":
    sys.exit(main())
