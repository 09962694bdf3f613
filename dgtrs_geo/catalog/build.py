"""Building a catalog: sources to scenes, scenes to parts (incremental, resumable), parts to search.

A run resolves its sources, indexes the scenes that are new, changed or damaged (each in its own
atomic part, see ``store.py``), reports the scenes that failed without stopping for them, and,
unless it is one shard of an array job, consolidates the catalog for search (``finalize.py``).
Killed at any point, the same command resumes: finished parts are kept, the rest is redone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..localization.encode import encode_texts
from ..localization.options import LocalizationOptions
from ..localization.session import resolve_model
from .distributed import resolve_shard, run_index
from .finalize import FinalizeSummary, finalize
from .indexing import SceneOutcome
from .options import catalog_options
from .sources import DEFAULT_ASSET, SceneFailure, resolve_sources
from .store import CatalogStore

__all__ = ["BuildSummary", "build_catalog"]

#: Progress callback: fraction done in [0, 1] and a message.
ProgressFn = Callable[[float, str], None]


@dataclass
class BuildSummary:
    """What one ``catalog index`` run did.

    Attributes:
        root: the catalog folder.
        shard: this job's ``(index, count)``.
        outcomes: one per scene of this job's share (every rank's, on global rank 0).
        source_failures: sources that gave no scene (missing files, STAC items without the asset).
        finalized: the consolidation, when this run did it.

    """

    root: Path
    shard: tuple[int, int]
    outcomes: list[SceneOutcome] = field(default_factory=list)
    source_failures: list[SceneFailure] = field(default_factory=list)
    finalized: FinalizeSummary | None = None

    def count(self, status: str) -> int:
        """Scenes of this run with ``status`` (``indexed``, ``unchanged``, ``failed``)."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def failures(self) -> list[SceneFailure]:
        """Every source or scene that failed in this run, with its error."""
        failed = [
            SceneFailure(o.href, o.error or "", o.scene_id)
            for o in self.outcomes
            if o.status == "failed"
        ]
        corrupt = self.finalized.corrupt if self.finalized else []
        return self.source_failures + failed + corrupt

    @property
    def ok(self) -> bool:
        """Whether every source and scene was indexed."""
        return not self.failures

    def report(self) -> str:
        """A table of the run: counts, then every failure with its error, then notes."""
        index, count = self.shard
        lines = [
            f"catalog {self.root}" + (f" (shard {index}/{count})" if count > 1 else ""),
            f"  indexed    {self.count('indexed'):>7} scenes "
            f"({sum(o.rows for o in self.outcomes if o.status == 'indexed')} windows)",
            f"  unchanged  {self.count('unchanged'):>7} scenes",
            f"  failed     {len(self.failures):>7}",
        ]
        if self.finalized is not None:
            lines.append(
                f"  searchable {self.finalized.scenes:>7} scenes, {self.finalized.rows} windows"
                + (" (FAISS IVF-PQ index)" if self.finalized.ann == "ivfpq" else " (exact search)")
            )
        elif count > 1:
            lines.append(f"  after every shard: dgtrs-geo catalog finalize {self.root}")
        lines += [f"  FAILED {f.source}: {f.error}" for f in self.failures]
        lines += [f"  note   {o.href}: {o.note}" for o in self.outcomes if o.note]
        return "\n".join(lines)


def _embedding_dim(model) -> int:
    """The model's embedding size: its ``embed_dim``, else the size of one text embedding."""
    if (dim := getattr(model, "embed_dim", None)) is not None:
        return int(dim)
    return int(encode_texts(model, ["a"]).shape[1])


def build_catalog(
    sources: Sequence[str | Path],
    model,
    root: str | Path,
    options: LocalizationOptions | None = None,
    *,
    asset: str = DEFAULT_ASSET,
    date_from: str | None = None,
    shard: str | tuple[int, int] | None = None,
    devices: int | None = None,
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: ProgressFn | None = None,
    **option_keywords,
) -> BuildSummary | None:
    """Index scenes into a catalog folder (created if needed); see ``Catalog.build``.

    Options not given are the catalog's own when it exists (its ``catalog.json``), else
    the defaults of :func:`~dgtrs_geo.catalog.options.catalog_options`.

    Returns:
        The run's summary on global rank 0; ``None`` on the other ranks of a DDP run.

    """
    if options is None and (Path(root) / "catalog.json").is_file():
        options = CatalogStore.open(root).options
    options = catalog_options(options, **option_keywords)
    shard_index, shard_count = resolve_shard(shard)
    source = str(Path(model).resolve()) if isinstance(model, str | Path) else None
    if source is not None and not Path(source).is_file():
        source = str(model)  # a registry name
    # Models given by name load on the CPU; Lightning moves them to each rank's device.
    model = resolve_model(model, "cpu")
    options.validate(model)  # pixel sizes under the model's patch are refused before any work
    store = CatalogStore.create_or_open(
        root, model_id=model.model_id, model=source, dim=_embedding_dim(model), options=options
    )
    scenes, source_failures = resolve_sources(sources, asset=asset, date_from=date_from)
    outcomes = run_index(
        store,
        scenes,
        model,
        options,
        shard=(shard_index, shard_count),
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        progress=progress,
    )
    if outcomes is None:
        return None
    summary = BuildSummary(store.root, (shard_index, shard_count), outcomes, source_failures)
    if shard_count == 1:
        summary.finalized = finalize(store.root, progress=progress)
    return summary
