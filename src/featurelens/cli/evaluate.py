"""``featurelens evaluate``: faithfulness metrics of saliency methods on a folder of images.

Writes ``results.csv``, ``per_image.csv``, ``results.md``, ``curves_deletion.png``,
``curves_insertion.png`` (and ``sanity.png``) and a self-contained ``index.html`` to ``--out``, and
prints the table. The work is done by :mod:`featurelens.metrics.run`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from featurelens.cli import common
from featurelens.cli.common import positive_int
from featurelens.errors import FeaturelensError, MethodError

DEFAULT_OUT = "featurelens-eval"
DEFAULT_METRICS = "deletion,insertion,adic"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "evaluate",
        help="faithfulness metrics (deletion/insertion AUC, AD/IC, ROAD, confidence change, pointing, sanity) "
        "of saliency methods",
        description="Explain every image of a folder with each method (predicted class) and measure how "
        "faithful the maps are. A random map and a centre Gaussian are always added as baselines. "
        "Files that are not images are skipped and counted.",
    )
    p.add_argument("--images", "-i", metavar="DIR", help="folder of images (classifier mode)")
    p.add_argument("--pairs", metavar="FILE", help="similarity mode: CSV of image pairs image_a,image_b")
    p.add_argument(
        "--model", default="efficientnet_lite0", help="model name or checkpoint (default: efficientnet_lite0)"
    )
    p.add_argument(
        "--methods",
        "-m",
        default="gradcam",
        metavar="M,M",
        help="comma-separated methods, or 'all' (default: gradcam)",
    )
    p.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        metavar="NAME,NAME",
        help="comma-separated: deletion, insertion, adic (Average Drop / Increase in Confidence; "
        "alias adcc), pointing, energy-pointing, sanity, road (ROAD MoRF/LeRF with noisy linear imputation), "
        "confidence-change (score of image x map minus score of the image) (default: deletion,insertion,adic)",
    )
    p.add_argument(
        "--similarity-metric",
        choices=["cosine", "euclidean"],
        default="cosine",
        help="similarity mode: the similarity being explained (default cosine)",
    )
    p.add_argument("--steps", type=positive_int, default=50, help="deletion/insertion steps (default 50)")
    p.add_argument(
        "--baseline",
        choices=["blur", "constant"],
        default="blur",
        help="what deleted pixels become in deletion/insertion (default blur)",
    )
    p.add_argument(
        "--batch-size",
        "-b",
        type=positive_int,
        default=16,
        help="rows per forward pass (default 16: on CPU larger batches are not faster)",
    )
    p.add_argument(
        "--layer", "-l", default=None, help="layer to explain (default: the model's default layer)"
    )
    p.add_argument(
        "--boxes", metavar="FILE", help="CSV image,x0,y0,x1,y1 (image pixels) for the pointing metrics"
    )
    p.add_argument(
        "--tolerance", type=int, default=0, help="pointing-game tolerance in input pixels (default 0)"
    )
    p.add_argument(
        "--scorecam-top-n",
        type=positive_int,
        default=None,
        metavar="N",
        help="Score-CAM fast mode (top-N channels); default exact",
    )
    p.add_argument(
        "--road-percentiles",
        type=_percentiles,
        default=None,
        metavar="P,P",
        help="ROAD: percentages of pixels removed (default 10,20,...,90)",
    )
    p.add_argument(
        "--trust", action="store_true", help="allow loading a pickled model checkpoint (runs its code)"
    )
    p.add_argument(
        "--out", "-o", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT}/)"
    )
    r = p.add_argument_group("distributed (classifier mode)")
    r.add_argument("--ray", action="store_true", help="evaluate batches of images on a local Ray instance")
    r.add_argument("--ray-address", default=None, metavar="ADDR", help="join a running Ray cluster (HEAD:6379)")
    r.add_argument("--ray-workers", type=positive_int, default=None, metavar="N",
                   help="Ray workers, one CPU and one torch thread each (default: the CPUs of this machine)")
    r.add_argument("--images-per-batch", type=positive_int, default=8, metavar="N",
                   help="images per Ray task (default: %(default)s)")
    p.set_defaults(func=run)


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"percentiles are comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v < 100 for v in values):
        raise argparse.ArgumentTypeError(f"percentiles must lie strictly between 0 and 100, got {text!r}")
    return values


def parse_method_list(text: str | Sequence[str]) -> list[str]:
    """Canonical method names from ``gradcam,gradcam++`` or ``all``; unknown names list the valid ones."""
    from featurelens.methods import get_method, method_names

    raw = [v.strip() for v in (text.split(",") if isinstance(text, str) else text) if v.strip()]
    if not raw:
        raise MethodError(f"no method given; valid methods: {', '.join(method_names())}")
    out: list[str] = []
    for v in raw:
        for name in method_names() if v.lower() == "all" else [get_method(v).name]:
            if name not in out:
                out.append(name)
    return out


def run(args: argparse.Namespace) -> int:
    from featurelens.metrics.evaluate import resolve_metrics
    from featurelens.metrics.run import write_run

    metrics = resolve_metrics(args.metrics)  # unknown metric: error listing the valid ones
    if (args.images is None) == (args.pairs is None):
        raise FeaturelensError("give either --images DIR (classifier mode) or --pairs FILE (similarity mode)")
    if args.pairs is not None:
        run_result = _similarity(args, metrics)
    else:
        methods = parse_method_list(args.methods)
        folder = Path(args.images)
        if not folder.is_dir():
            raise FeaturelensError(f"{folder}: not a folder (--images takes a folder of images)")
        from featurelens.metrics.run import evaluate_classifier_folder

        spec = common.load_spec(args.model, trust=args.trust)
        layers = common.layer_names_for(spec, [args.layer] if args.layer else None)
        if args.ray or args.ray_address:
            if args.boxes:
                raise FeaturelensError("--boxes (the pointing metrics) is not available with --ray")
            run_result = _on_ray(args, methods, metrics, layers[0])
        bar = common.progress_bar(0 if args.ray or args.ray_address else len(methods) + 2, desc="evaluating",
                                  unit="method")
        try:
            run_result = run_result if args.ray or args.ray_address else evaluate_classifier_folder(
                spec,
                folder,
                methods,
                metrics,
                layer=layers[0],
                steps=args.steps,
                baseline=args.baseline,
                batch_size=args.batch_size,
                boxes_file=args.boxes,
                tolerance=args.tolerance,
                scorecam_top_n=args.scorecam_top_n,
                road_percentiles=args.road_percentiles,
                progress=lambda _m: bar.update(1),
            )
        finally:
            bar.close()
    out = common.output_dir(args.out)
    files = write_run(run_result, out)
    common.echo(run_result.table.to_text())
    n = len(run_result.sample_names)
    line = f"{n} image(s) evaluated"
    if run_result.skipped:
        line += f"; skipped {len(run_result.skipped)} file(s): " + ", ".join(
            name for name, _ in run_result.skipped[:10]
        )
        common.warn(f"skipped {len(run_result.skipped)} file(s) that are not usable images")
    common.echo(line)
    common.echo(f"wrote {len(files)} files to {out}/ (summary: {files['html']})")
    return 0


def _on_ray(args: argparse.Namespace, methods: list[str], metrics: list[str], layer: str):  # type: ignore[no-untyped-def]
    """Batches of the folder's images on Ray workers (:mod:`featurelens.metrics.distributed`)."""
    from featurelens.metrics.distributed import evaluate_folder_batched
    from featurelens.network.executor import make_executor

    executor = make_executor(True, address=args.ray_address, workers=args.ray_workers, cpus_per_worker=1.0)
    return evaluate_folder_batched(
        args.model, args.images, methods, metrics, executor=executor, images_per_batch=args.images_per_batch,
        trust=args.trust, threads=1, layer=layer, steps=args.steps, baseline=args.baseline,
        batch_size=args.batch_size, scorecam_top_n=args.scorecam_top_n, road_percentiles=args.road_percentiles,
        progress=True)


def _similarity(args: argparse.Namespace, metrics: list[str]):  # type: ignore[no-untyped-def]
    from featurelens.metrics.run import read_pairs

    pairs = read_pairs(args.pairs)  # clear error listing missing files
    try:
        from featurelens.metrics.similarity_eval import evaluate_pairs
    except ImportError as exc:
        raise FeaturelensError(f"similarity mode is not available: {exc}") from None
    return evaluate_pairs(
        pairs, args.methods, metrics, steps=args.steps, baseline=args.baseline, batch_size=args.batch_size
    )
