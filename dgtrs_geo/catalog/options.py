"""The options that fix a catalog's windows: recorded once in ``catalog.json``, the same for every scene.

Field names are those of :class:`~dgtrs_geo.localization.options.LocalizationOptions` (one spelling
per concept). Window sizes default to metres: a catalog mixes resolutions, and a 256 m window
shows the same ground on a 0.5 m aerial and a 10 m satellite scene.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import InputError

__all__ = ["DEFAULT_SCALES_M", "CatalogOptions"]

#: Default window sizes of a catalog, in metres.
DEFAULT_SCALES_M: tuple[float, ...] = (128.0, 256.0, 512.0)


@dataclass(frozen=True)
class CatalogOptions:
    """How every scene of a catalog is cut into windows and read.

    Attributes:
        scales: window sizes, in ``scale_unit``.
        scale_unit: ``"m"`` (converted per scene with its ground sample distance) or ``"px"``.
        bands: 1-based bands read as R, G, B (``None``: the first three, or a grey band thrice).
        stretch: ``"auto"`` (2-98 percentile stretch of non-8-bit scenes) or ``"none"``.
        min_valid: windows with a smaller share of valid (not nodata) pixels are not embedded.

    """

    scales: tuple[float, ...] = DEFAULT_SCALES_M
    scale_unit: str = "m"
    bands: tuple[int, ...] | None = None
    stretch: str = "auto"
    min_valid: float = 0.5

    def validate(self) -> CatalogOptions:
        """Return self if every value is usable, else raise :class:`InputError` naming it."""
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise InputError(f"scales must be positive sizes, got {list(self.scales)}")
        if self.scale_unit not in ("m", "px"):
            raise InputError(f"scale_unit must be 'm' or 'px', got {self.scale_unit!r}")
        if self.bands is not None and (
            len(self.bands) not in (1, 3) or min(self.bands) < 1
        ):
            raise InputError(
                f"bands must be one or three 1-based band numbers, got {list(self.bands)}"
            )
        if self.stretch not in ("auto", "none"):
            raise InputError(f"stretch must be 'auto' or 'none', got {self.stretch!r}")
        if not 0.0 <= self.min_valid <= 1.0:
            raise InputError(f"min_valid must lie in [0, 1], got {self.min_valid}")
        return self

    def to_json(self) -> dict:
        """Return the options as a JSON-able dict."""
        data = asdict(self)
        data["scales"] = [float(s) for s in self.scales]
        data["bands"] = None if self.bands is None else list(self.bands)
        return data

    @classmethod
    def from_json(cls, data: dict) -> CatalogOptions:
        """Read options written by :meth:`to_json`; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise InputError(f"unknown catalog option(s) {unknown}: known are {sorted(known)}")
        values = dict(data)
        if "scales" in values:
            values["scales"] = tuple(float(s) for s in values["scales"])
        if values.get("bands") is not None:
            values["bands"] = tuple(int(b) for b in values["bands"])
        return cls(**values).validate()
