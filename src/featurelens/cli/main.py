"""``featurelens`` command line: a thin shell over the Python API.

Each sub-command lives in its own module of this package with a ``register(subparsers)`` function
that adds its parser and sets ``func`` (a callable ``args -> int``). Errors that a user can cause
(:class:`~featurelens.errors.FeaturelensError`) are printed on one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from featurelens.errors import FeaturelensError

#: modules of featurelens.cli that register sub-commands, in help order
COMMAND_MODULES = [
    "explain",
    "inspect_cmd",
    "similarity",
    "evaluate",
    "network",
    "game",
    "labels",
    "demo_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featurelens",
        description="See why a CNN decides what it decides: CAM-family saliency, SFAM similarity maps, "
        "layer-wise network explanations and their crowd labels.",
    )
    from featurelens import __version__

    parser.add_argument("--version", action="version", version=f"featurelens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"featurelens.cli.{name}").register(sub)
    return parser


def error(message: str) -> int:
    print(f"featurelens: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub: all models ship offline
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FeaturelensError as exc:
        return error(str(exc))
    except KeyboardInterrupt:
        return error("interrupted")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
