"""dgtrs-geo: find things in satellite and aerial imagery by describing them in words.

Public API: :func:`load_model` (any CLIP checkpoint or registered name), :func:`localize` (a
raster and sentences in, georeferenced heatmaps and polygons out), and for many queries a
:class:`Localizer` session with its :class:`LocalizationOptions`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["LocalizationOptions", "Localizer", "__version__", "load_model", "localize"]


def __getattr__(name: str) -> Any:
    # Lazy, so ``import dgtrs_geo`` (the CLI, the QGIS worker) does not pay for torch up front.
    if name == "load_model":
        from .models import load_model

        return load_model
    if name in ("localize", "Localizer", "LocalizationOptions"):
        from . import localization

        return getattr(localization, name)
    raise AttributeError(f"module 'dgtrs_geo' has no attribute {name!r}")
