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


def _load_model(args: argparse.Namespace):  # noqa: ANN202
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
    p.add_argument("input", help="a DGTRSD manifest (.jsonl) or an image folder (+ .txt captions)")
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
        limit=args.limit,
        prompt_dir=args.prompt_dir,
        dry_run=args.dry_run,
        progress=not args.no_progress,
    )
    if not args.dry_run:
        _print_json(summary.as_dict())
    return 1 if summary.failed else 0


_COMMANDS: list[tuple[Callable, Callable]] = [
    (_add_models, _run_models),
    (_add_convert, _run_convert),
    (_add_embed_text, _run_embed_text),
    (_add_embed_image, _run_embed_image),
    (_add_captions, _run_captions),
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
