r"""Where dgtrs-geo keeps what it can recompute or download again: weights and embedding indexes.

One rule for every cache: ``$DGTRS_GEO_CACHE`` if set (``~`` expanded), else
``$XDG_CACHE_HOME/dgtrs-geo``, else the platform's user cache folder (``~/.cache/dgtrs-geo`` on
Linux, ``~/Library/Caches/dgtrs-geo`` on macOS, ``%LOCALAPPDATA%\\dgtrs-geo\\Cache`` on Windows).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(kind: str | None = None) -> Path:
    """Return the cache folder, or its sub-folder ``kind`` (``"models"``, ``"indexes"``...).

    The folder is not created here: writers create it when they first write.
    """
    if env := os.environ.get("DGTRS_GEO_CACHE"):
        base = Path(env).expanduser()
    elif xdg := os.environ.get("XDG_CACHE_HOME"):
        base = Path(xdg).expanduser() / "dgtrs-geo"
    elif sys.platform == "win32" and (local := os.environ.get("LOCALAPPDATA")):
        base = Path(local) / "dgtrs-geo" / "Cache"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "dgtrs-geo"
    else:
        base = Path.home() / ".cache" / "dgtrs-geo"
    return base / kind if kind else base
