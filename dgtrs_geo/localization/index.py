"""The embedding index: the expensive half of localization, stored for every later query.

Format (a directory, version 1), readable with numpy and json alone::

    <name>.dgtrs-index/
        index.json        format, model_id, raster fingerprint and description (path, size, CRS
                          as WKT, geotransform, bands, stretch), the plan (scales, region,
                          reference or fast preprocessing, min_valid), count, dim, created
        windows.npy       int64 [N, 4]   col_off, row_off, width, height in raster pixels
        footprints.npy    float64 [N, 4] minx, miny, maxx, maxy in the raster's CRS
        embeddings.npy    float32 [N, D] L2-normalised image embeddings
        valid.npy         bool [rows, cols] validity (not nodata) of the default heatmap grid, whose
                          cell side in pixels is ``valid_cell`` in index.json; only for rasters
                          with nodata, so queries need not read the raster's mask again

Only windows that were embedded are listed (mostly-nodata windows are skipped). The directory is
written under a temporary name and renamed, so an interrupted build leaves no index behind.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from .errors import IndexMismatchError

__all__ = ["EmbeddingIndex", "default_index_dir", "index_key"]

FORMAT = "dgtrs-geo-embedding-index"
VERSION = 1


def default_index_dir(raster: str | Path) -> Path:
    """Return where indexes of ``raster`` live by default.

    ``$DGTRS_GEO_CACHE/indexes`` when that variable is set, else a ``.dgtrs-index`` folder next to
    the raster when that folder can be written, else ``~/.cache/dgtrs-geo/indexes``.
    """
    if os.environ.get("DGTRS_GEO_CACHE"):
        return Path(os.environ["DGTRS_GEO_CACHE"]) / "indexes"
    beside = Path(raster).resolve().parent / ".dgtrs-index"
    if os.access(beside if beside.exists() else beside.parent, os.W_OK):
        return beside
    return Path.home() / ".cache" / "dgtrs-geo" / "indexes"


def index_key(model_id: str, fingerprint: str, raster: dict, plan: dict) -> str:
    """Return the hash that names an index: it changes with the model, raster pixels or plan."""
    payload = json.dumps(
        {"model_id": model_id, "fingerprint": fingerprint, "raster": raster, "plan": plan},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def footprints(windows: np.ndarray, transform: Affine) -> np.ndarray:
    """Return ``[N, 4]`` map bounds ``(minx, miny, maxx, maxy)`` of pixel windows."""
    w = np.asarray(windows, dtype=np.float64)
    corners_x = np.stack([w[:, 0], w[:, 0] + w[:, 2], w[:, 0], w[:, 0] + w[:, 2]], axis=1)
    corners_y = np.stack([w[:, 1], w[:, 1], w[:, 1] + w[:, 3], w[:, 1] + w[:, 3]], axis=1)
    a, b, c, d, e, f = list(transform)[:6]
    xs = a * corners_x + b * corners_y + c
    ys = d * corners_x + e * corners_y + f
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


@dataclass
class EmbeddingIndex:
    """Window embeddings of one raster under one model and plan.

    Attributes:
        meta: the ``index.json`` contents.
        windows: int64 ``[N, 4]`` pixel windows.
        footprints: float64 ``[N, 4]`` map bounds.
        embeddings: float32 ``[N, D]``.
        valid: bool validity of the default heatmap grid (``meta["valid_cell"]`` px cells), or
            ``None`` when every pixel is valid.
        path: the index directory, once saved or loaded.

    """

    meta: dict
    windows: np.ndarray
    footprints: np.ndarray
    embeddings: np.ndarray
    valid: np.ndarray | None = None
    path: Path | None = None

    @property
    def model_id(self) -> str:
        """The model the embeddings come from."""
        return self.meta["model_id"]

    @property
    def transform(self) -> Affine:
        """The raster's geotransform."""
        return Affine(*self.meta["raster"]["transform"])

    def __len__(self) -> int:
        return len(self.windows)

    @classmethod
    def create(
        cls,
        *,
        model_id: str,
        fingerprint: str,
        raster: dict,
        plan: dict,
        windows: np.ndarray,
        embeddings: np.ndarray,
        valid: np.ndarray | None = None,
        valid_cell: int | None = None,
    ) -> EmbeddingIndex:
        """Assemble an index from a build's parts (see the module docstring for the fields)."""
        transform = Affine(*raster["transform"])
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "key": index_key(model_id, fingerprint, raster, plan),
            "model_id": model_id,
            "fingerprint": fingerprint,
            "raster": raster,
            "plan": plan,
            "count": int(len(windows)),
            "dim": int(embeddings.shape[1]) if embeddings.ndim == 2 else 0,
            "valid_cell": valid_cell if valid is not None else None,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        return cls(
            meta=meta,
            windows=np.asarray(windows, dtype=np.int64),
            footprints=footprints(windows, transform),
            embeddings=np.asarray(embeddings, dtype=np.float32),
            valid=None if valid is None else np.asarray(valid, dtype=bool),
        )

    def subset(self, region: tuple[int, int, int, int], plan: dict) -> EmbeddingIndex:
        """Return the windows that overlap ``region`` as an in-memory index for that plan.

        Args:
            region: ``(col_off, row_off, width, height)`` in pixels.
            plan: the plan parameters of the region (stored as this subset's ``plan``).

        Returns:
            An unsaved index (``path`` None) whose ``meta["subset_of"]`` names this one.
        """
        col, row, width, height = region
        w = self.windows
        overlaps = (
            (w[:, 0] < col + width)
            & (w[:, 0] + w[:, 2] > col)
            & (w[:, 1] < row + height)
            & (w[:, 1] + w[:, 3] > row)
        )
        meta = {
            **self.meta,
            "plan": plan,
            "count": int(overlaps.sum()),
            "valid_cell": None,
            "subset_of": str(self.path) if self.path else self.meta["key"],
        }
        return EmbeddingIndex(
            meta=meta,
            windows=w[overlaps],
            footprints=self.footprints[overlaps],
            embeddings=self.embeddings[overlaps],
        )

    def save(self, path: str | Path) -> Path:
        """Write the index directory atomically (a temporary sibling, renamed); return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o777 & ~umask)
            np.save(tmp / "windows.npy", self.windows)
            np.save(tmp / "footprints.npy", self.footprints)
            np.save(tmp / "embeddings.npy", self.embeddings)
            if self.valid is not None:
                np.save(tmp / "valid.npy", self.valid)
            (tmp / "index.json").write_text(json.dumps(self.meta, indent=2))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingIndex:
        """Read an index directory.

        Raises:
            FileNotFoundError: if there is no index at ``path``.
            ValueError: if the directory is not an index of a format this version reads.

        """
        path = Path(path)
        meta_path = path / "index.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no embedding index at {path} (index.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(
                f"{path} is not a version-{VERSION} dgtrs-geo embedding index: rebuild it with "
                "`dgtrs-geo index RASTER`"
            )
        return cls(
            meta=meta,
            windows=np.load(path / "windows.npy"),
            footprints=np.load(path / "footprints.npy"),
            embeddings=np.load(path / "embeddings.npy"),
            valid=np.load(path / "valid.npy") if (path / "valid.npy").exists() else None,
            path=path,
        )

    def check(self, model_id: str, fingerprint: str, raster: dict, plan: dict) -> None:
        """Raise :class:`IndexMismatchError` naming what differs if this index does not fit.

        Args:
            model_id: the model that will embed the queries.
            fingerprint: the raster's current fingerprint.
            raster: the raster description (bands, stretch, size, CRS, transform).
            plan: the plan parameters.

        """
        problems = []
        if self.meta["model_id"] != model_id:
            problems.append(f"it was built with model {self.meta['model_id']!r}, not {model_id!r}")
        if self.meta["fingerprint"] != fingerprint:
            problems.append("the raster file changed since it was built")
        stored = {k: v for k, v in self.meta["raster"].items() if k != "path"}
        if stored != {k: v for k, v in raster.items() if k != "path"}:
            problems.append("the raster's size, georeferencing, bands or stretch differ")
        if self.meta["plan"] != plan:
            problems.append(f"its window plan {self.meta['plan']} differs from {plan}")
        if problems:
            where = f" at {self.path}" if self.path else ""
            raise IndexMismatchError(
                f"embedding index{where} does not fit: " + "; ".join(problems) + ". Rebuild it "
                "(`dgtrs-geo index RASTER --model ...`) or let localize use its cache directory."
            )
