"""The options that fix a catalog's windows, taken from :class:`LocalizationOptions`.

A catalog is the single-raster pipeline run over many scenes, so its options are the engine's
(one declaration, one spelling): of them, :data:`CATALOG_FIELDS` decide which windows a scene
gets and how its pixels are read. They are recorded in ``catalog.json`` and every later run into
the catalog must use the same. Window sizes default to metres: a catalog mixes resolutions, and a
256 m window shows the same ground on a 0.5 m aerial and a 10 m satellite scene.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputError
from ..localization.options import LocalizationOptions

__all__ = ["CATALOG_FIELDS", "DEFAULT_SCALES_M", "catalog_options", "options_record"]

#: Default window sizes of a catalog, in metres.
DEFAULT_SCALES_M: tuple[float, ...] = (128.0, 256.0, 512.0)

#: The options a catalog records: the same for every scene of it.
CATALOG_FIELDS = ("scales", "scale_unit", "bands", "stretch", "min_valid")


def catalog_options(
    options: LocalizationOptions | Mapping[str, Any] | None = None, **changes: Any
) -> LocalizationOptions:
    """Return validated options for a catalog: the engine's, with window sizes in metres.

    Args:
        options: options (or a ``catalog.json`` record of them) to start from; default
            :data:`DEFAULT_SCALES_M` metres.
        **changes: fields to change (``scales``, ``scale_unit``, ``bands``, ``stretch``,
            ``min_valid``, ``batch_size``, ``num_workers``, ``device``).

    Raises:
        InputError: if a value is out of range, or the reference recipe is asked for (a
            catalog's windows are embedded the fast way, as ``dgtrs-geo localize`` does).

    """
    if not isinstance(options, LocalizationOptions):
        defaults = {"scales": DEFAULT_SCALES_M, "scale_unit": "m"}
        options = LocalizationOptions.from_json({**defaults, **(options or {})})
    merged = options.replace(**changes)
    if merged.reference:
        raise InputError("catalogs embed windows the fast way: leave out --reference")
    return merged.validate()


def options_record(options: LocalizationOptions) -> dict[str, Any]:
    """Return the :data:`CATALOG_FIELDS` of ``options`` as ``catalog.json`` records them."""
    data = options.to_json()
    return {name: data[name] for name in CATALOG_FIELDS}
