"""Dropping the scenes whose file is gone: ``dgtrs-geo catalog prune``.

``catalog index`` adds and updates scenes but never removes one: the sources of one run are not
the whole catalog (array-job shards, and runs over different folders, add up). When files are
deleted or moved, ``prune`` drops each scene whose local file no longer exists (its part, then its
record), then finalizes, so searches stop returning places that can no longer be opened. Scenes
read over http(s) are kept: a server that does not answer today has not proved the file gone.
When every local scene is missing, the data is more likely unmounted than deleted: that is
refused unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..errors import InputError
from .build import ProgressFn
from .finalize import FinalizeSummary, finalize
from .remote import is_remote
from .store import CatalogStore

__all__ = ["PruneSummary", "prune"]


@dataclass
class PruneSummary:
    """What :func:`prune` dropped.

    Attributes:
        root: the catalog folder.
        dropped: ``(scene_id, href)`` of each scene whose file is gone (dropped unless dry run).
        finalized: the search index rebuilt afterwards (``None`` on a dry run).

    """

    root: Path
    dropped: list[tuple[str, str]]
    finalized: FinalizeSummary | None

    def report(self) -> str:
        """One line per scene dropped, then what is searchable."""
        verb = "dropped" if self.finalized is not None else "would drop"
        lines = [f"catalog {self.root}: {verb} {len(self.dropped)} scene(s) whose file is gone"]
        lines += [f"  {verb} {scene_id}: {href}" for scene_id, href in self.dropped]
        if self.finalized is not None:
            lines.append(
                f"  searchable {self.finalized.scenes} scenes, {self.finalized.rows} windows"
            )
        return "\n".join(lines)


def prune(
    root: str | Path,
    *,
    dry_run: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> PruneSummary:
    """Drop the scenes of a catalog whose local file no longer exists, then finalize.

    Run it when no ``catalog index`` is writing into the catalog.

    Args:
        root: the catalog folder.
        dry_run: only list the scenes that would be dropped.
        force: drop them even when every local scene's file is missing.
        progress: called with ``(fraction, message)`` while finalizing.

    Raises:
        InputError: if every local scene is missing and ``force`` is not set.

    """
    store = CatalogStore.open(root)
    with FileLock(store.root / ".lock"):  # the lock finalize takes: no finalize reads meanwhile
        records = store.records()
        local = [r for r in records.values() if not is_remote(r["href"])]
        gone = [(r["scene_id"], r["href"]) for r in local if not Path(r["href"]).exists()]
        if gone and len(gone) == len(local) and not force:
            raise InputError(
                f"none of the {len(local)} local scene files of {store.root} exists (first: "
                f"{gone[0][1]}): if the data is only unmounted or moved, mount it (or re-index "
                "from its new place); to drop them all, pass --force"
            )
        if not dry_run:
            for scene_id, _ in gone:
                store.drop(scene_id)
    finalized = None if dry_run else finalize(store.root, progress=progress)
    return PruneSummary(store.root, gone, finalized)
