"""Users' own captions: chips cut from georeferenced rasters around vector features.

A user draws features over their imagery (a GeoPackage in QGIS) and types a
caption into an attribute column; this dataset turns each feature into a chip of
the raster around it with that caption, so DGTRS-CLIP can be fine-tuned on the
user's own area. Rasters and vectors may be in different CRSs.
"""

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import geopandas as gpd
import pandas as pd
import shapely
import torch
from matplotlib.figure import Figure
from pyproj import CRS
from torch import Generator
from torchgeo.datasets import DatasetNotFoundError, GeoDataset, RasterDataset
from torchgeo.datasets.utils import GeoSlice, Path
from torchgeo.samplers import GeoSampler, Units

from ..errors import InputError
from .dgtrsd import SPLITS
from .utils import CaptionPlotMixin, ManifestError


class UserCaptions(CaptionPlotMixin, GeoDataset):
    """Caption chips around the features of a vector file over rasters.

    Every feature gives one sample: the raster square centred on the centre of
    the feature's bounding box, ``chip_size`` wide (in pixels or CRS units),
    widened to hold the whole feature when it is larger, and always read at the
    same number of pixels so chips batch together. Its caption comes from
    ``caption_column`` (short) and ``long_caption_column`` (long; the short
    caption when not given).

    Index it with :class:`FeatureChipSampler`, which yields each feature's chip.

    Sample keys: ``image`` (float [3, N, N], raster values, 0..255 for 8-bit
    imagery), ``caption_short``, ``caption_long``, ``crs``, ``bounds``.
    """

    def __init__(
        self,
        paths: Path | Iterable[Path],
        vectors: Path,
        caption_column: str,
        long_caption_column: str | None = None,
        split: str | None = None,
        split_column: str | None = None,
        layer: str | None = None,
        chip_size: float = 224,
        units: Units = Units.PIXELS,
        bands: Sequence[int] = (1, 2, 3),
        crs: CRS | None = None,
        res: float | tuple[float, float] | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Initialize a new UserCaptions instance.

        Args:
            paths: Raster files, or folders searched for them.
            vectors: Vector file (GeoPackage, GeoJSON, Shapefile) with the features.
            caption_column: Attribute holding each feature's (short) caption.
            long_caption_column: Attribute holding a long description, if any.
            split: Keep only features whose ``split_column`` equals this
                ("train", "val", "test"); None keeps every feature.
            split_column: Attribute naming each feature's split.
            layer: Layer of a multi-layer vector file (GeoPackage).
            chip_size: Chip width, in pixels or CRS units (see *units*).
            units: :attr:`Units.PIXELS` or :attr:`Units.CRS` (metres in a projected
                CRS).
            bands: 1-based raster bands read as red, green, blue; a single band is
                repeated.
            crs: CRS to work in (defaults to the first raster's).
            res: Resolution in CRS units (defaults to the first raster's).
            transforms: A function/transform that takes a sample and returns a
                transformed version.

        Raises:
            InputError: If *split* is unknown, or given without *split_column* (a
                ``ValueError`` too).
            DatasetNotFoundError: If no raster or the vector file is not found.
            ManifestError: If the vector file cannot be read, a column is missing, a
                caption is empty or a feature names an unknown split.
        """
        if split is not None and split not in SPLITS:
            raise InputError(f"Unknown split {split!r}; expected one of {SPLITS}.")
        if split is not None and split_column is None:
            raise InputError(f"split={split!r} needs split_column: the attribute naming splits.")
        self.paths = paths
        self.vectors = vectors
        self.split = split
        self.bands = list(bands)
        self.transforms = transforms
        self.raster = RasterDataset(paths, crs=crs, res=res)
        self._res = self.raster.res

        if not os.path.isfile(vectors):
            raise DatasetNotFoundError(self)
        try:
            features = gpd.read_file(vectors, layer=layer)
        except (RuntimeError, ValueError) as error:  # pyogrio's errors for what is no vector layer
            raise ManifestError(f"{vectors} cannot be read as a vector layer: {error}") from error
        if features.crs is None:
            raise ManifestError(f"{vectors} has no CRS; set the layer's CRS in QGIS and save it.")
        columns = [caption_column, long_caption_column, split_column]
        for column in filter(None, columns):
            if column not in features.columns:
                raise ManifestError(
                    f"{vectors} has no column {column!r}; columns: "
                    f"{[c for c in features.columns if c != 'geometry']}."
                )
        features = features[features.geometry.notna() & ~features.geometry.is_empty]
        # Work in the raster CRS: footprints and queries must match the imagery
        features = features.to_crs(self.raster.crs)

        pixels = chip_size if units == Units.PIXELS else chip_size / self.res[0]
        self.chip_pixels = max(1, round(pixels))
        chip_extent = self.chip_pixels * self.res[0]

        rows = []
        for fid, feature in features.iterrows():
            where = f"{vectors} feature {fid}"
            if split_column is not None:
                value = feature[split_column]
                if value not in SPLITS:
                    raise ManifestError(
                        f"{where}: unknown split {value!r}; expected one of {SPLITS}."
                    )
                if split is not None and value != split:
                    continue
            short = feature[caption_column]
            long = feature[long_caption_column] if long_caption_column else short
            for name, text in ((caption_column, short), (long_caption_column, long)):
                if not isinstance(text, str) or not text.strip():
                    raise ManifestError(f"{where}: empty caption in column {name!r}.")
            xmin, ymin, xmax, ymax = feature.geometry.bounds
            side = max(chip_extent, xmax - xmin, ymax - ymin)
            cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
            box = shapely.box(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            rows.append((fid, short.strip(), long.strip(), box))

        extent = shapely.union_all(list(self.raster.index.geometry))
        inside = [r for r in rows if extent.intersects(r[3])]
        self.num_outside = len(rows) - len(inside)
        if self.num_outside:
            warnings.warn(
                f"Left out {self.num_outside} features of {vectors} that lie outside the rasters.",
                stacklevel=2,
            )
        if not inside:
            raise ManifestError(f"{vectors}: no feature of split {split!r} overlaps the rasters.")
        fids, shorts, longs, boxes = zip(*inside, strict=True)
        times = pd.IntervalIndex.from_tuples(
            [(pd.Timestamp.min, pd.Timestamp.max)] * len(inside), closed="both", name="datetime"
        )
        self.index = gpd.GeoDataFrame(
            {"fid": fids, "caption_short": shorts, "caption_long": longs},
            index=times,
            geometry=list(boxes),
            crs=self.raster.crs,
        )

    def chip(self, i: int) -> tuple[slice, slice, slice]:
        """Return the query that reads feature *i*'s chip at ``chip_pixels`` pixels.

        Args:
            i: Row of :attr:`index`.

        Returns:
            ``(x, y, t)`` slices; the steps set the resolution.
        """
        xmin, ymin, xmax, ymax = self.index.geometry.iloc[i].bounds
        step = (xmax - xmin) / self.chip_pixels
        interval = self.index.index[i]
        return (
            slice(xmin, xmax, step),
            slice(ymin, ymax, step),
            slice(interval.left, interval.right),
        )

    def __getitem__(self, query: GeoSlice) -> dict[str, Any]:
        """Return the chip of the feature whose footprint is centred nearest *query*.

        Args:
            query: ``[xmin:xmax:xres, ymin:ymax:yres, tmin:tmax]``; see :meth:`chip`.

        Returns:
            Sample with ``image``, ``caption_short``, ``caption_long``, ``crs`` and
            ``bounds``.

        Raises:
            IndexError: If no feature's chip overlaps *query*.
        """
        x, y, _ = self._disambiguate_slice(query)
        hits = self.index.cx[x.start : x.stop, y.start : y.stop]
        if hits.empty:
            raise IndexError(f"query {query} holds no feature chip of {self.vectors}.")
        centre = shapely.Point((x.start + x.stop) / 2, (y.start + y.stop) / 2)
        row = hits.iloc[int(hits.geometry.centroid.distance(centre).argmin())]

        image = self.raster[query]["image"]
        image = image[[b - 1 for b in self.bands]] if image.shape[0] > 1 else image.repeat(3, 1, 1)
        sample: dict[str, Any] = {
            "image": image.float(),
            "caption_short": row["caption_short"],
            "caption_long": row["caption_long"],
            "crs": self.crs,
            "bounds": query,
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def plot(
        self, sample: dict[str, Any], show_titles: bool = True, suptitle: str | None = None
    ) -> Figure:
        """Plot a sample as :meth:`CaptionPlotMixin.plot` does, its image min-max stretched.

        Args:
            sample: A sample returned by :meth:`__getitem__`.
            show_titles: Whether to show the captions (and ``prediction`` if present).
            suptitle: Optional figure title.

        Returns:
            A matplotlib Figure with the rendered sample.
        """
        image = sample["image"]
        # Rasters need not be 8-bit: stretch to 0..255 for display only
        low, high = image.min(), image.max()
        shown = (image - low) / max(float(high - low), 1e-12) * 255
        return super().plot({**sample, "image": shown}, show_titles, suptitle)


class FeatureChipSampler(GeoSampler):
    """Yield the chip of every feature of a :class:`UserCaptions`, once per epoch."""

    def __init__(
        self, dataset: UserCaptions, shuffle: bool = False, generator: Generator | None = None
    ) -> None:
        """Initialize a new FeatureChipSampler instance.

        Args:
            dataset: The dataset whose features to visit.
            shuffle: Visit them in a random order each epoch.
            generator: Random generator used when shuffling.
        """
        super().__init__(dataset)
        self.dataset = dataset
        self.shuffle = shuffle
        self.generator = generator

    def __iter__(self) -> Iterator[GeoSlice]:
        """Yield each feature's chip query.

        Yields:
            ``(x, y, t)`` slices for :meth:`UserCaptions.__getitem__`.
        """
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else range(n)
        for i in order:
            yield self.dataset.chip(int(i))

    def __len__(self) -> int:
        """Return the number of features.

        Returns:
            Number of chips per epoch.
        """
        return len(self.dataset)
