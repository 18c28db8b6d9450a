"""``featurelens demo``: the offline demo report (every section of :data:`featurelens.demo.SECTIONS`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from featurelens.cli import common

DEFAULT_OUT = "featurelens-demo"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run the offline demo and write a self-contained HTML report",
        description="Explain scikit-image's sample photos with the embedded EfficientNet-Lite0 and every method "
        "(and the other demo sections), offline. Methods with a fast mode (Score-CAM) use it unless --full. Writes DIR/index.html (open it in a browser) and DIR/demo.json. "
        "Exit code 1 when a section failed (it is shown as an error box in the page).",
    )
    p.add_argument(
        "--out", "-o", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT}/)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller workloads (two photos; fast modes)")
    mode.add_argument(
        "--full",
        action="store_true",
        help="exact methods everywhere (exact Score-CAM: slower); the default uses each method's fast mode",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from featurelens.demo import run_demo

    out = common.output_dir(args.out)
    code = run_demo(out, quick=args.quick, full=args.full)
    index = (Path(out) / "index.html").resolve()
    verdict = "report" if code == 0 else "report (some sections FAILED, see the red boxes)"
    common.echo(f"demo {verdict}: {index}")
    common.echo(f"open it with a browser: file://{index}")
    return code
