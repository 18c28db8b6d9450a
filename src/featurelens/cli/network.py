"""``featurelens network`` (explain images layer by layer into a bundle) and ``featurelens bundle``
(``validate`` / ``view`` an existing bundle)."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from featurelens.cli.common import non_negative_int
from featurelens.errors import FeaturelensError
from featurelens.network.modes import DEFAULT_MODE, MODE_ALIASES, MODES


def _images(paths: list[str]) -> list[Path]:
    from featurelens.imaging import list_images

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found, _ = list_images(p)
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise FeaturelensError("no images given (pass image files or folders holding images)")
    return out


def run_network(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from featurelens.imaging import load_image
    from featurelens.models import load_model
    from featurelens.network.build import build_bundle, read_labels
    from featurelens.network.layers import resolve_units
    from featurelens.network.pipeline import NetworkParams
    from featurelens.network.viewer import write_viewer

    paths = _images(args.images)
    for p in paths:  # fail early, with the file name, before loading the model
        load_image(p)
    labels = None
    if args.labels_from:
        labels = "dirname" if args.labels_from == "dirname" else read_labels(args.labels_from)
    out = Path(args.out)
    if (out / "bundle.json").exists():
        raise FeaturelensError(f"{out} already holds a bundle; choose an empty output folder")
    spec = load_model(args.model, trust=args.trust)
    layers = resolve_units(spec.model, spec.sample_input(), args.layers)
    params = NetworkParams(mode="stable" if args.fast else args.mode, effect=not args.no_effect,
                           workers=args.workers, seed=args.seed, stability_runs=args.stability,
                           prune_rule=args.prune, cluster_map_rule=args.cluster_maps,
                           smooth_sigma=args.smooth or None)
    bar = tqdm(total=len(paths) * len(layers), unit="layer", desc="network", disable=args.quiet, file=sys.stderr)
    try:
        bundle = build_bundle(spec, paths, out, layers=layers, params=params, labels=labels,
                              batch_size=args.batch_size, progress=bar.update)
    finally:
        bar.close()
    n_clusters = sum(len(im.clusters) for im in bundle.images)
    print(f"wrote {out} ({len(bundle.images)} images x {len(bundle.layers)} layers "
          f"{bundle.layers[0].name} … {bundle.layers[-1].name}, {n_clusters} clusters, mode {params.mode})")
    stab = bundle.layer_stat_values("stability")
    if stab:
        low = sum(v < 0.8 for v in stab)
        print(f"stability ({params.stability_runs} noisy re-clustering(s) per layer): median ARI "
              f"{statistics.median(stab):.2f} over {len(stab)} layers; {low} below 0.8 (see layer_stats)")
    if args.viewer:
        print(f"viewer: {write_viewer(out).resolve()}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from featurelens.network.bundle import validate_bundle

    problems = validate_bundle(args.bundle)
    if problems:
        for p in problems:
            print(f"{args.bundle}: {p}", file=sys.stderr)
        return 1
    print(f"{args.bundle}: valid bundle")
    return 0


def run_view(args: argparse.Namespace) -> int:
    from featurelens.network.viewer import write_viewer

    print(write_viewer(args.bundle))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "network",
        help="layer-wise network explanation of images into a bundle (Bianchi et al., IJCAI 2024)",
        description="Cluster the gradient-weighted channels of many conv layers per image and write an "
        "explanation bundle (bundle.json + maps + overlays).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--model", default="efficientnet_lite0", help="model name or checkpoint (default: %(default)s)")
    p.add_argument("--trust", action="store_true", help="allow loading a pickled model checkpoint")
    p.add_argument("--layers", action="append", default=None, metavar="L[,L...]",
                   help="post-activation layers (conv → [norm] → activation), comma-separated or repeated: unit "
                   "names (blocks.8.expand.act, layer1.0.relu@1) or their conv names, containers (blocks.12), "
                   "ranges A..B, slices i:j, 'all' or 'default' (default: the later half of the activated layers); "
                   "a conv with no activation named explicitly is explained at its raw output")
    p.add_argument("--fast", action="store_true", help="same as --mode stable")
    p.add_argument("--mode", default=DEFAULT_MODE, choices=[*MODES, *MODE_ALIASES],
                   help="embedding before Ward clustering: paper (scikit-learn t-SNE as the authors call it), "
                   "faithful (our exact t-SNE), stable (spectral; alias fast), pca (default: %(default)s)")
    p.add_argument("--prune", default="paper", choices=["paper", "uniform"],
                   help="channel pruning: paper (w_k > d(K), the authors' table) or uniform (w_k >= 0.9*100/K)")
    p.add_argument("--cluster-maps", default="raw", choices=["raw", "normalized"],
                   help="cluster map = weighted mean of the raw activations (the authors') or of min-max maps")
    p.add_argument("--smooth", type=float, default=0.0, metavar="SIGMA",
                   help="Gaussian smoothing of the image-resolution maps in pixels (default: off, as the authors)")
    p.add_argument("--out", default="network-bundle", help="output bundle folder (default: %(default)s)")
    p.add_argument("--labels-from", default=None, metavar="SRC",
                   help="true classes: 'dirname' (the image's folder name) or a CSV file with file,label rows")
    p.add_argument("--no-effect", action="store_true", help="skip the per-cluster deletion effect")
    p.add_argument("--workers", type=int, default=2, help="layers clustered in parallel (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward/backward pass")
    p.add_argument("--seed", type=int, default=432, help="seed of the paper mode (the authors': %(default)s) and of "
                   "the --stability noise")
    p.add_argument("--stability", type=non_negative_int, default=0, metavar="N",
                   help="re-cluster every layer N times under float-noise-sized perturbations and record how "
                   "much the clusters move (ARI and map agreement in layer_stats); costs N extra clusterings")
    p.add_argument("--viewer", action=argparse.BooleanOptionalAction, default=True,
                   help="write the static HTML viewer (index.html) into the bundle (default: on; --no-viewer skips it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_network)

    b = sub.add_parser("bundle", help="validate or view an explanation bundle")
    bsub = b.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    v = bsub.add_parser("validate", help="check a bundle against its schema (exit 1 when invalid)")
    v.add_argument("bundle", help="bundle folder or its bundle.json")
    v.set_defaults(func=run_validate)
    w = bsub.add_parser("view", help="write the static HTML viewer into the bundle and print its path")
    w.add_argument("bundle", help="bundle folder")
    w.set_defaults(func=run_view)
