"""The ``dgtrs-geo`` command line: parses arguments, calls the engine, prints results.

Each sub-command is a pair of functions, ``_add_<name>(subparsers)`` that declares its arguments
and ``_run_<name>(args) -> int`` that runs it; ``_COMMANDS`` lists the pairs. Engine modules are
imported inside the run functions so ``dgtrs-geo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__


def _print_json(payload: object) -> None:
    json.dump(payload, sys.stdout, indent=2)
    sys.stdout.write("\n")


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
        print(f"{row['name']:<24} {row['arch']:<18} {row['context_length']:>7}  {cached:<6} {row['path']}")
    return 0


_COMMANDS: list[tuple[Callable, Callable]] = [
    (_add_models, _run_models),
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
