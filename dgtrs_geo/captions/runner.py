"""Run a step over many items: resumable, concurrent, patient with flaky servers.

Items already in the output are skipped (see :mod:`.journal`); the rest go to a thread pool of
``concurrency`` workers, with at most twice that many submitted at once so a million-item run
holds a bounded amount of work in memory. Each request is retried with exponential backoff and
jitter on transport faults (honouring ``Retry-After``) and at once on malformed answers, up to
``max_attempts`` tries. Only the main thread writes, so rows never interleave. Items that still
fail go to ``<output>.failed.jsonl`` and are retried by the next run.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from ..errors import InputError
from .backends import Backend, FatalBackendError, ItemError, Message, RetryableError, make_backend
from .config import CaptionConfig
from .journal import Journal
from .masks import read_class_table
from .prompts import load_prompt
from .sources import Item, read_items, read_user_features, with_masks
from .steps import MalformedOutput, Step, make_step

__all__ = [
    "RunStoppedError",
    "RunSummary",
    "failed_path",
    "manifest_row",
    "run_captions",
    "run_step",
]


class RunStoppedError(InputError, RuntimeError):
    """The backend refused every item (wrong URL, key or model); the rows written so far stay."""


@dataclass
class RunSummary:
    """What a run did.

    Args:
        step: the step run.
        total: items given.
        skipped: items already in the output when the run started.
        written: rows appended by this run.
        failed: items that failed every attempt (listed in the failed file).
        counts: ``requests`` sent, and failed tries by cause: ``transport`` (timeouts,
            429, 5xx, bad bodies) and ``malformed`` (answers not in the asked form).
        seconds: wall time of the run.

    """

    step: str
    total: int
    skipped: int = 0
    written: int = 0
    failed: int = 0
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        """Rows written per second of wall time."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON-ready data."""
        return {
            "step": self.step,
            "total": self.total,
            "skipped": self.skipped,
            "written": self.written,
            "failed": self.failed,
            "counts": dict(self.counts),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 2),
        }


def failed_path(output: str | Path) -> Path:
    """Return where a run lists the items it gave up on: ``<output stem>.failed.jsonl``."""
    output = Path(output)
    return output.with_name(output.stem + ".failed.jsonl")


class _FailureLog:
    """The last run's failures, one JSON line each; created only when something fails.

    Unlike the output it is not a journal: failed items are retried by the next run, so an old
    list would name items that are done by then. Each run starts it afresh.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.unlink(missing_ok=True)
        self._file: TextIO | None = None

    def add(self, row: dict[str, Any]) -> None:
        if self._file is None:
            self._file = self.path.open("w", encoding="utf-8")
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def manifest_row(item: Item, update: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Return ``item``'s DGTRSD row after ``update``, with paths relative to ``folder`` if inside.

    Args:
        item: the item.
        update: fields the step adds or replaces.
        folder: the output manifest's folder.

    """

    def where(path: Path) -> str:
        return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)

    row: dict[str, Any] = {"id": item.id, "image": where(item.image)}
    row["caption_short"] = item.fields.get("caption_short", "")
    row["caption_long"] = item.fields.get("caption_long", "")
    row.update((k, v) for k, v in item.fields.items() if k not in row)
    if item.mask is not None:
        row["mask"] = where(item.mask)
    row.update(update)
    return row


class _Asker:
    """Sends one item's requests, retrying until an answer parses or attempts run out."""

    def __init__(self, backend: Backend, step: Step, config: CaptionConfig, stats: Counter) -> None:
        self.backend, self.step, self.config = backend, step, config
        self.stats = stats
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _backoff(self, retry: int, hint: float | None) -> float:
        if hint is not None:
            return min(hint, self.config.backoff_max)
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2**retry)
        # full jitter spreads the workers that a 429 hit together
        return random.uniform(ceiling / 2, ceiling)

    def __call__(
        self, messages: list[Message], parse: Callable[[str], dict[str, Any]]
    ) -> dict[str, Any]:
        settings = self.step.settings
        error: Exception | None = None
        for attempt in range(self.config.max_attempts):
            if self._stop.is_set():
                raise ItemError("run stopped")
            self._count("requests")
            try:
                text = self.backend.complete(
                    messages,
                    model=settings.model,
                    temperature=settings.temperature,
                    max_tokens=settings.max_tokens,
                )
                return parse(text)
            except RetryableError as fault:
                error = fault
                self._count("transport")
                if attempt + 1 < self.config.max_attempts:
                    self._stop.wait(self._backoff(attempt, fault.retry_after))
            except MalformedOutput as fault:
                error = fault
                self._count("malformed")
        raise ItemError(f"gave up after {self.config.max_attempts} attempts; last error: {error}")

    def stop(self) -> None:
        """Make waiting and future attempts end at once."""
        self._stop.set()


def _placeholder(path: Path) -> str:
    return f"<image {path}>"


def _print_dry_run(step: Step, items: Sequence[Item], stream: TextIO) -> None:
    for item in items:
        stream.write(f"===== {step.prompt.name} | {item.id} | model {step.settings.model}\n")
        try:
            messages = step.messages(item, image_url=_placeholder)
        except ItemError as error:
            stream.write(f"(skipped: {error})\n")
            continue
        for message in messages:
            content = message["content"]
            if not isinstance(content, str):
                content = "\n".join(
                    part["text"] if part["type"] == "text" else part["image_url"]["url"]
                    for part in content
                )
            stream.write(f"--- {message['role']}\n{content}\n")


def run_step(
    step: str,
    items: Sequence[Item],
    output: str | Path,
    config: CaptionConfig,
    *,
    backend: Backend | None = None,
    prompt_dir: str | Path | None = None,
    classes: Mapping[int, str] | None = None,
    ignore: Sequence[int] = (),
    dry_run: int = 0,
    progress: bool = True,
    stream: TextIO | None = None,
) -> RunSummary:
    """Run ``step`` on every item not yet in ``output`` and append a DGTRSD row for each.

    Args:
        step: ``long``, ``short``, ``masks`` or ``score``.
        items: the items (from :mod:`.sources`).
        output: the JSONL manifest to append to; a rerun with the same output resumes.
        config: the run's settings.
        backend: the backend to use; made from ``config`` by default.
        prompt_dir: folder of prompt files; the packaged prompts by default.
        classes: id -> class name, for the masks step.
        ignore: label ids the masks step leaves out.
        dry_run: if positive, print the prompts of this many items and send nothing.
        progress: show a progress bar (rate and ETA) on stderr.
        stream: where the dry run prints; stdout by default.

    Returns:
        The run's summary.

    Raises:
        RunStoppedError: if the backend fails in a way no item can get past (e.g. a wrong URL or
            key); rows written until then stay in the output (a ``RuntimeError`` too).

    """
    config_step = make_step(
        load_prompt(step, config.step(step).prompt_version, prompt_dir),
        config,
        classes=classes,
        ignore=ignore,
    )
    summary = RunSummary(step=step, total=len(items))
    if dry_run > 0:
        _print_dry_run(config_step, items[:dry_run], stream or sys.stdout)
        return summary
    start = time.perf_counter()
    output = Path(output)
    folder = output.parent.resolve()
    failures = _FailureLog(failed_path(output))
    with Journal(output) as journal:
        todo = [item for item in items if item.id not in journal.done]
        summary.skipped = len(items) - len(todo)
        if not todo:
            return summary
        backend = backend or make_backend(config, step)
        asker = _Asker(backend, config_step, config, summary.counts)
        provenance = {
            "model": config_step.settings.model,
            "prompt_version": config_step.prompt.name,
            "backend": backend.name,
        }

        def work(item: Item) -> dict[str, Any]:
            try:
                update = config_step.process(item, asker)
            except (OSError, ValueError) as error:  # unreadable image or mask, bad mask shape
                raise ItemError(f"{item.id}: {error}") from error
            stamp = {**provenance, "time": datetime.now(UTC).isoformat(timespec="seconds")}
            update["provenance"] = {**item.fields.get("provenance", {}), step: stamp}
            return manifest_row(item, update, folder)

        bar = tqdm(
            total=len(items), initial=summary.skipped, unit="row", desc=step, disable=not progress
        )
        pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="captions")
        pending: dict[Future, Item] = {}
        queue = iter(todo)
        try:
            while True:
                for item in queue:
                    pending[pool.submit(work, item)] = item
                    if len(pending) >= 2 * config.concurrency:
                        break
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    item = pending.pop(future)
                    try:
                        journal.append(future.result())
                        summary.written += 1
                    except ItemError as error:
                        failures.add({"id": item.id, "image": str(item.image), "error": str(error)})
                        summary.failed += 1
                    bar.update(1)
        except FatalBackendError as error:
            raise RunStoppedError(f"{step} step stopped: {error}") from error
        finally:
            asker.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            failures.close()
            summary.seconds = time.perf_counter() - start
    return summary


def run_captions(
    step: str,
    source: str | Path,
    output: str | Path,
    config: CaptionConfig,
    *,
    masks: str | Path | None = None,
    classes: str | Path | None = None,
    ignore: Sequence[int] = (),
    rasters: str | Path | None = None,
    caption_column: str = "caption",
    long_caption_column: str | None = None,
    layer: str | None = None,
    chip_size: float = 224,
    limit: int | None = None,
    **options: Any,
) -> RunSummary:
    """Read ``source`` and run ``step`` on it: the whole pipeline behind ``dgtrs-geo captions``.

    Args:
        step: ``long``, ``short``, ``masks`` or ``score``.
        source: a DGTRSD manifest (``.jsonl``), a folder of images (with ``.txt`` sidecars), or
            with ``rasters`` a vector file of captioned features (GeoPackage, GeoJSON, ...).
        output: the JSONL manifest to write or resume.
        config: the run's settings.
        masks: folder of label masks mirroring an image folder ``source`` (masks step); a
            manifest source may give each row's mask in a ``mask`` key instead.
        classes: class table file (CSV ``id,name`` or JSON), for the masks step.
        ignore: label ids the masks step leaves out.
        rasters: raster file or folder under the features of a vector ``source``; chips are
            saved in ``chips/`` next to ``output``.
        caption_column: the features' short-caption attribute.
        long_caption_column: the features' long-caption attribute, if any.
        layer: layer of a multi-layer vector file.
        chip_size: chip width in pixels around each feature.
        limit: run on the first ``limit`` items only.
        **options: passed to :func:`run_step` (``backend``, ``prompt_dir``, ``dry_run``,
            ``progress``, ``stream``).

    Returns:
        The run's summary.

    """
    if Path(source).resolve() == Path(output).resolve():
        raise InputError(f"the output {output} is the input; write to a new file")
    if rasters is not None:
        items = read_user_features(
            rasters,
            source,
            caption_column,
            Path(output).parent / "chips",
            long_caption_column=long_caption_column,
            layer=layer,
            chip_size=chip_size,
        )
    else:
        items = read_items(source)
    if masks is not None:
        items = with_masks(items, masks, source)
    if limit is not None:
        items = items[:limit]
    table = read_class_table(classes) if classes is not None else None
    return run_step(step, items, output, config, classes=table, ignore=ignore, **options)
