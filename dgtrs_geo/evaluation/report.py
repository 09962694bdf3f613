"""Write evaluation results: JSON, a Markdown table in the published layout, CSVs and figures.

The main table has one row per model and the columns of docs/protocols.md sec. 9: ``<dataset> mR``
for retrieval (x100), the top-1 accuracy (%) for each zero-shot dataset, and
``SeLo Rsu / Rda / Ras / Rmi`` (4 decimals, no leading zero, as published). Detail tables follow.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..errors import OutputError
from .zeroshot import plot_confusion_matrix

SELO_COLUMNS = ("rsu", "rda", "ras", "rmi")


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".partial"
        )
        os.close(handle)
        write(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):  # read-only folder, a file in the way, disk full
            raise OutputError(
                f"cannot write {path} ({error.strerror or error}): choose another output folder"
            ) from error
        raise
    return path


def _write_text(path: Path, text: str) -> Path:
    def write(temporary: str) -> None:
        Path(temporary).write_text(text, encoding="utf-8")

    return _atomic_write(path, write)


def safe_file_name(text: str) -> str:
    """Replace characters that are unsafe in file names (model labels are free text)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _selo_value(value: float) -> str:
    text = f"{value:.4f}"
    return text[1:] if text.startswith("0.") else text


def _selo_cell(mean: dict[str, float]) -> str:
    return " / ".join(_selo_value(mean[name]) for name in SELO_COLUMNS)


def _recall_cell(results: dict[str, Any], name: str, granularity: str) -> str:
    return f"{results[name][granularity]['mR']:.2f}"


def _top1_cell(results: dict[str, Any], name: str) -> str:
    return f"{results[name]['top1']:.2f}"


def _selo_mode_cell(results: dict[str, Any], name: str, mode: str) -> str:
    return _selo_cell(results[name][mode]["mean"])


def _seconds_cell(results: dict[str, Any], name: str) -> str:
    return " / ".join(f"{v['seconds_per_query']:.2f}" for v in results[name].values())


def _columns(report: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """Column titles and how to fill them from one model's results, in the published order."""
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    datasets = report["datasets"]
    first = report["results"][report["models"][0]]
    for entry in (d for d in datasets if d["task"] == "retrieval"):
        name = entry["name"]
        for granularity in ("short", "long"):
            if granularity in first[name]:
                title = f"{name} mR" if granularity == "short" else f"{name} long mR"
                columns.append((title, partial(_recall_cell, name=name, granularity=granularity)))
    for entry in (d for d in datasets if d["task"] == "zeroshot"):
        columns.append((entry["name"], partial(_top1_cell, name=entry["name"])))
    for entry in (d for d in datasets if d["task"] == "selo"):
        name = entry["name"]
        prefix = "SeLo" if name == "AIRSLT" else f"SeLo {name}"
        for mode in first[name]:
            suffix = "" if mode == "reference" else f" ({mode})"
            columns.append(
                (
                    f"{prefix}{suffix} Rsu / Rda / Ras / Rmi",
                    partial(_selo_mode_cell, name=name, mode=mode),
                )
            )
        columns.append(
            (f"{prefix} s/query ({' / '.join(first[name])})", partial(_seconds_cell, name=name))
        )
    return columns


def plot_selo_maps(
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    polygons: list[np.ndarray],
    title: str | None = None,
    max_side: int = 1024,
) -> Figure:
    """Draw an image with its ground-truth polygons next to its probability maps.

    Args:
        image: uint8 ``[H, W, 3]``.
        maps: probability maps ``[H, W]`` by mode name.
        polygons: pixel (x, y) ground-truth polygons.
        title: optional figure title (the query).
        max_side: images and maps are subsampled to at most this many pixels a side for drawing.

    Returns:
        A matplotlib Figure.

    """
    step = max(1, int(np.ceil(max(image.shape[:2]) / max_side)))
    extent = (0, image.shape[1], image.shape[0], 0)
    fig, axs = plt.subplots(1, 1 + len(maps), figsize=(5 * (1 + len(maps)), 5), squeeze=False)
    panels = [("image", None), *maps.items()]
    for ax, (name, prob_map) in zip(axs[0], panels, strict=True):
        ax.imshow(image[::step, ::step], extent=extent)
        if prob_map is not None:
            ax.imshow(
                prob_map[::step, ::step], cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent
            )
        for polygon in polygons:
            closed = np.vstack([polygon, polygon[:1]])
            ax.plot(closed[:, 0], closed[:, 1], color="lime", linewidth=1.5)
        ax.set_title(name)
        ax.axis("off")
    if title is not None:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Save a figure as PNG atomically and close it.

    Args:
        figure: the figure.
        path: the PNG file.

    Returns:
        The path written.

    """
    try:
        return _atomic_write(
            Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=120)
        )
    finally:
        plt.close(figure)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(report: dict[str, Any]) -> str:
    """Render the results as Markdown: the summary table, then the detail tables.

    Args:
        report: what :func:`~dgtrs_geo.evaluation.runner.run_evaluation` returns.

    Returns:
        The Markdown text.

    """
    columns = _columns(report)
    summary = _table(
        ["model"] + [title for title, _ in columns],
        [
            [label] + [fill(report["results"][label]) for _, fill in columns]
            for label in report["models"]
        ],
    )
    parts = ["# dgtrs-geo evaluation", "", summary, ""]
    retrieval_rows = []
    for label in report["models"]:
        for entry in (d for d in report["datasets"] if d["task"] == "retrieval"):
            for granularity, recalls in report["results"][label][entry["name"]].items():
                keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")
                retrieval_rows.append(
                    [label, entry["name"], granularity] + [f"{recalls[k]:.2f}" for k in keys]
                )
    if retrieval_rows:
        header = ["model", "dataset", "captions", "I2T R@1", "I2T R@5", "I2T R@10"]
        header += ["T2I R@1", "T2I R@5", "T2I R@10", "mR"]
        parts += ["## Retrieval", "", _table(header, retrieval_rows), ""]
    selo_rows = []
    for label in report["models"]:
        for entry in (d for d in report["datasets"] if d["task"] == "selo"):
            for mode, result in report["results"][label][entry["name"]].items():
                mean = result["mean"]
                selo_rows.append(
                    [label, entry["name"], mode]
                    + [f"{mean[k]:.4f}" for k in SELO_COLUMNS]
                    + [f"{result['seconds_per_query']:.3f}", str(len(result["samples"]))]
                )
    if selo_rows:
        header = ["model", "dataset", "mode", "Rsu", "Rda", "Ras", "Rmi", "s/query", "queries"]
        parts += ["## Semantic localization", "", _table(header, selo_rows), ""]
    return "\n".join(parts)


def _selo_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    fields = ["model", "dataset", "mode", "index", "jpg_name", "caption", *SELO_COLUMNS, "seconds"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for label in report["models"]:
        for entry in (d for d in report["datasets"] if d["task"] == "selo"):
            for mode, result in report["results"][label][entry["name"]].items():
                for row in result["samples"]:
                    writer.writerow({"model": label, "dataset": entry["name"], "mode": mode, **row})
    return buffer.getvalue()


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``selo_samples.csv`` and figures to ``out_dir``.

    Every file is written to a temporary name and renamed, so an interrupted run leaves no
    half-written file.

    Args:
        report: what :func:`~dgtrs_geo.evaluation.runner.run_evaluation` returns.
        out_dir: output folder (created if missing).

    Returns:
        The written files by kind (``json``, ``markdown``, ``selo_csv``, ``figure:<name>``).

    """
    out = Path(out_dir)
    written = {
        "json": _write_text(out / "results.json", json.dumps(report, indent=2) + "\n"),
        "markdown": _write_text(out / "results.md", markdown_report(report)),
    }
    if any(d["task"] == "selo" for d in report["datasets"]):
        written["selo_csv"] = _write_text(out / "selo_samples.csv", _selo_csv(report))
    for label in report["models"]:
        for entry in (d for d in report["datasets"] if d["task"] == "zeroshot"):
            result = report["results"][label][entry["name"]]
            figure = plot_confusion_matrix(
                result["confusion"], result["classnames"], f"{label} on {entry['name']}"
            )
            name = safe_file_name(f"confusion-{entry['name']}-{label}.png")
            written[f"figure:{name}"] = save_figure(figure, out / "figures" / name)
    return written
