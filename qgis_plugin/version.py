"""The plugin's version (``metadata.txt``, the single source) and whether an engine matches it.

No QGIS import: the packaging script and the backend client read it too.
"""

from __future__ import annotations

import configparser
import os
import re
from typing import Optional, Tuple

#: ``metadata.txt`` beside the plugin's modules (a link to the repository's in a checkout).
METADATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metadata.txt")


def plugin_version(metadata: str = METADATA) -> str:
    """Return the ``version`` in the plugin's ``metadata.txt``."""
    parser = configparser.ConfigParser()
    parser.read(metadata, encoding="utf-8")
    return parser["general"]["version"]


def release(version: str) -> Tuple[int, ...]:
    """Return the leading numbers of a version (``"0.1.0.dev3"`` -> ``(0, 1, 0)``)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version or "")
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def engine_mismatch(engine: Optional[str], plugin: str) -> Optional[str]:
    """Compare the backend's engine version with the plugin's.

    Args:
        engine: the version the worker's ``ready`` event reported (None when it sent none).
        plugin: the plugin's version.

    Returns:
        None when they are the same release; ``"minor"`` when only the patch level (or a
        pre-release suffix) differs, so the protocol is the same; ``"major"`` when the
        major or minor number differs (the request format may have changed).

    """
    if engine == plugin:
        return None
    ours, theirs = release(plugin), release(engine or "")
    if theirs[:2] != ours[:2] or not theirs:
        return "major"
    return "minor"
