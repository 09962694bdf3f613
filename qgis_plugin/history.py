"""The dock's history of runs, stored with the project, and removing a run's files.

Each entry is the run's record (see :mod:`qgis_plugin.layers`), newest first, written as JSON
into the project (``QgsProject.writeEntry("dgtrs_geo", "history")``) whenever it changes, so it
is saved and restored with the ``.qgz`` like the result layers themselves.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional

from qgis.core import QgsProject

SCOPE, KEY = "dgtrs_geo", "history"
#: Entries kept with a project.
MAX_ENTRIES = 100


def slug(text: str, limit: int = 40) -> str:
    """Return a file-name-safe form of a query."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "query"


def new_record(
    query: str, now: Optional[datetime.datetime] = None, **fields: Any
) -> Dict[str, Any]:
    """Return a run's record with a unique ``id`` (time to the microsecond and query) and time."""
    now = now or datetime.datetime.now()
    record = {
        "id": "{}-{}".format(now.strftime("%Y%m%d-%H%M%S-%f"), slug(query)),
        "query": query,
        "time": now.isoformat(timespec="seconds"),
    }
    record.update(fields)
    return record


def load(project: Optional[QgsProject] = None) -> List[Dict[str, Any]]:
    """Return the history stored in the project (newest first; [] when none)."""
    text, found = (project or QgsProject.instance()).readEntry(SCOPE, KEY, "")
    if not found or not text:
        return []
    try:
        entries = json.loads(text)
    except ValueError:
        return []
    return [entry for entry in entries if isinstance(entry, dict) and "id" in entry]


def save(entries: List[Dict[str, Any]], project: Optional[QgsProject] = None) -> None:
    """Store the history in the project (it is written with the project file)."""
    (project or QgsProject.instance()).writeEntry(SCOPE, KEY, json.dumps(entries[:MAX_ENTRIES]))


def delete_files(record: Dict[str, Any], results_root: str) -> List[str]:
    """Delete a run's result files; return the paths deleted.

    The run's own folder (``<results>/<id>``, made for it by the dock) goes as a whole; files
    elsewhere (a Processing output) are left alone.
    """
    folder = record.get("out_dir") or ""
    inside = os.path.normcase(os.path.abspath(os.path.dirname(folder))) == os.path.normcase(
        os.path.abspath(results_root)
    )
    if folder and os.path.basename(folder) == record["id"] and inside and os.path.isdir(folder):
        shutil.rmtree(folder)
        return [folder]
    return []
