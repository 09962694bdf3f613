"""``dgtrs-geo catalog index | finalize | prune | search``: the catalog's sub-commands.

The main command registers them with :func:`add_catalog_command`. Flags of the window options
are declared from :class:`~dgtrs_geo.localization.options.LocalizationOptions` (one declaration;
flags not given stay out, so the catalog's own options or the catalog defaults apply). Engine
modules are imported inside the run functions so ``dgtrs-geo --help`` stays fast. Exit codes:
0 done, 1 some scenes failed (listed), 2 a failure the user can fix (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable

__all__ = ["add_catalog_command"]

#: Window and run options a catalog index run takes from LocalizationOptions.
_INDEX_OPTIONS = (
    "scales",
    "scale_unit",
    "bands",
    "stretch",
    "min_valid",
    "batch_size",
    "num_workers",
    "device",
)


def _add_options(p: argparse.ArgumentParser) -> None:
    from ..localization.options import flag_name, option_fields

    group = p.add_argument_group("window options (default: the catalog's, or 128 256 512 m)")
    for item in option_fields("index"):
        if item.name not in _INDEX_OPTIONS:
            continue
        meta = item.metadata
        choices = meta.get("choices")
        group.add_argument(
            flag_name(item.name),
            dest=item.name,
            nargs=meta.get("nargs"),
            metavar="{" + ",".join(choices) + "}" if choices else meta.get("metavar"),
            default=argparse.SUPPRESS,
            help=meta["help"],
        )


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="embed the windows of many scenes into a catalog (incremental, resumable)",
        description="Index new or changed scenes into NAME.dgtrs-catalog; rerun to resume.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="raster files or URLs, globs, folders, VRT mosaics, STAC JSON")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="the catalog folder (NAME.dgtrs-catalog)")
    p.add_argument(
        "--model",
        default=os.environ.get("DGTRS_GEO_MODEL", "dgtrs-clip-vit-b-16"),
        help="registered name or checkpoint path (default: $DGTRS_GEO_MODEL or "
        "dgtrs-clip-vit-b-16)",
    )
    p.add_argument("--asset", default="visual", help="STAC asset key to index (default: visual)")
    p.add_argument("--date-from", metavar="REGEX",
                   help=r"scene date from file names, e.g. '_(\d{8})_' (STAC: its datetime)")  # fmt: skip
    p.add_argument("--shard", metavar="I/N",
                   help="this job's share of an array job (or N: index from SLURM_ARRAY_TASK_ID, "
                   "JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX)")  # fmt: skip
    p.add_argument("--devices", type=int, help="Lightning devices (GPUs) per node (default 1)")
    p.add_argument("--num-nodes", type=int, default=1, help="Lightning nodes (default 1)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    _add_options(p)


def _progress():  # noqa: ANN202
    """Return ``(close, update)`` of a progress bar on stderr, drawn from the first update."""
    from tqdm.auto import tqdm

    bars: list = []

    def update(fraction: float, message: str) -> None:
        if not bars:
            bars.append(tqdm(total=100, unit="%", file=sys.stderr,
                             bar_format="{l_bar}{bar}| {desc}"))  # fmt: skip
        bars[0].n = min(100, round(100 * fraction))
        bars[0].set_description_str(message[:60], refresh=True)

    def close() -> None:
        for bar in bars:
            bar.close()

    return close, update


def _run_index(args: argparse.Namespace) -> int:
    from .build import build_catalog

    given = {name: getattr(args, name) for name in _INDEX_OPTIONS if hasattr(args, name)}
    close, update = _progress()
    try:
        summary = build_catalog(
            args.sources,
            args.model,
            args.output,
            asset=args.asset,
            date_from=args.date_from,
            shard=args.shard,
            devices=args.devices,
            num_nodes=args.num_nodes,
            strategy=args.strategy,
            progress=update,
            **given,
        )
    finally:
        close()
    if summary is None:  # another DDP rank: global rank 0 reports
        return 0
    print(summary.report())
    if args.json:
        failures = [{"source": f.source, "scene_id": f.scene_id, "error": f.error}
                    for f in summary.failures]  # fmt: skip
        counts = {s: summary.count(s) for s in ("indexed", "unchanged")}
        json.dump({"catalog": str(summary.root), **counts, "failures": failures}, sys.stdout)
        sys.stdout.write("\n")
    return 0 if summary.ok else 1


def _add_finalize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finalize",
        help="consolidate every part for search (after all shards of an array job)",
    )
    p.add_argument("catalog", help="the catalog folder")


def _run_finalize(args: argparse.Namespace) -> int:
    from .finalize import finalize

    close, update = _progress()
    try:
        summary = finalize(args.catalog, progress=update)
    finally:
        close()
    print(f"catalog {args.catalog}: {summary.scenes} scenes, {summary.rows} windows searchable"
          + (" (FAISS IVF-PQ index)" if summary.ann == "ivfpq" else " (exact search)"))  # fmt: skip
    for failure in summary.corrupt + summary.failed:
        print(f"  FAILED {failure.source}: {failure.error}")
    return 0 if not (summary.corrupt or summary.failed) else 1


def _add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="drop the scenes whose local file no longer exists, then finalize",
        description="Drop the scenes of a catalog whose local file is gone (deleted or moved), "
        "then rebuild its search index. Scenes over http(s) are kept.",
    )
    p.add_argument("catalog", help="the catalog folder")
    p.add_argument("--dry-run", action="store_true", help="only list what would be dropped")
    p.add_argument("--force", action="store_true",
                   help="drop them even when every local scene's file is missing")  # fmt: skip


def _run_prune(args: argparse.Namespace) -> int:
    from .prune import prune

    close, update = _progress()
    try:
        summary = prune(args.catalog, dry_run=args.dry_run, force=args.force, progress=update)
    finally:
        close()
    print(summary.report())
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find places across a catalog that match text")
    p.add_argument("catalog", help="the catalog folder")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="what to find, in words")
    p.add_argument("--top", type=int, default=10, help="results per text (default 10)")
    p.add_argument("--bbox", metavar="MINX,MINY,MAXX,MAXY",
                   help="only windows touching this box (in --bbox-crs, longitude first)")  # fmt: skip
    p.add_argument("--bbox-crs", default="EPSG:4326", help="CRS of --bbox (default EPSG:4326)")
    p.add_argument("--aoi", metavar="FILE", help="only windows intersecting this vector file")
    p.add_argument("--date", metavar="START/END",
                   help="only scenes dated within (ISO 8601; '..' leaves a side open)")  # fmt: skip
    p.add_argument("--min-distance", type=float, metavar="METRES",
                   help="between two results' centres (default: 3/4 of the larger window's side)")  # fmt: skip
    p.add_argument("-o", "--output", help="write results.gpkg, results.parquet (and heatmaps/)")
    p.add_argument("--heatmaps", type=int, default=0, metavar="N",
                   help="map each text on its N best scenes, from stored embeddings")  # fmt: skip
    p.add_argument("--model", help="the catalog's model (default: the one it records)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _bbox(text: str | None) -> list[float] | None:
    from ..errors import InputError

    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--bbox {text!r} must be four numbers minx,miny,maxx,maxy") from None


def _table(hits) -> str:  # noqa: ANN001
    lines = [f"{'query':<24} {'rank':>4} {'score':>7}  {'lon':>10} {'lat':>9} {'size':>7}  "
             f"{'date':<10}  scene"]  # fmt: skip
    for row in hits.itertuples():
        centre = row.geometry.centroid
        date = (
            row.date.strftime("%Y-%m-%d") if row.date is not None and row.date == row.date else ""
        )
        lines.append(f"{row.query[:24]:<24} {row.rank:>4} {row.score:>7.4f}  {centre.x:>10.5f} "
                     f"{centre.y:>9.5f} {row.size_m:>6.0f}m  {date:<10}  {row.scene}")  # fmt: skip
    return "\n".join(lines)


def _run_search(args: argparse.Namespace) -> int:
    from .api import Catalog

    catalog = Catalog.open(args.catalog)
    hits = catalog.search(
        args.texts,
        args.top,
        model=args.model,
        bbox=_bbox(args.bbox),
        bbox_crs=args.bbox_crs,
        aoi=args.aoi,
        date=args.date,
        min_distance=args.min_distance,
        heatmaps=args.heatmaps,
        out_dir=args.output,
        device=args.device,
    )
    if args.json:
        hits["date"] = hits["date"].map(lambda d: d.isoformat() if d == d and d else None)
        sys.stdout.write(hits.to_json(drop_id=True) + "\n")
    else:
        print(_table(hits))
        if args.output:
            print(f"wrote {os.path.join(args.output, 'results.gpkg')} and results.parquet")
    return 0


_SUBCOMMANDS: dict[str, tuple[Callable, Callable]] = {
    "index": (_add_index, _run_index),
    "finalize": (_add_finalize, _run_finalize),
    "prune": (_add_prune, _run_prune),
    "search": (_add_search, _run_search),
}


def _run(args: argparse.Namespace) -> int:
    """Run a catalog sub-command; a failure the user can fix is one line and exit code 2.

    dgtrs-geo's own warnings (a box outside every scene, a scene without a heatmap) are one line
    each too; other libraries' keep Python's format.
    """
    from ..errors import DgtrsGeoError

    prefix = f"dgtrs-geo catalog {args.catalog_command}"
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if f"{os.sep}dgtrs_geo{os.sep}" in filename:
            print(f"{prefix}: warning: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            return args.catalog_run(args)
    except DgtrsGeoError as error:
        print(f"{prefix}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


def add_catalog_command(sub: argparse._SubParsersAction) -> None:
    """Declare ``dgtrs-geo catalog`` and its sub-commands on the main command's subparsers."""
    p = sub.add_parser(
        "catalog",
        help="index whole imagery collections and search them in words",
        description="Catalogs of many scenes: index, finalize (after array jobs), prune "
        "(scenes whose file is gone), search. "
        "See docs/catalog.md.",
    )
    commands = p.add_subparsers(dest="catalog_command", required=True, metavar="COMMAND")
    for name, (add, run) in _SUBCOMMANDS.items():
        add(commands)
        commands.choices[name].set_defaults(catalog_run=run)
    p.set_defaults(run=_run)
