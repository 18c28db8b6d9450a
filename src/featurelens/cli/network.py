"""``featurelens network`` (explain images layer by layer into a bundle) and ``featurelens bundle``
(``validate`` / ``view`` an existing bundle)."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from featurelens.cli.common import non_negative_int, positive_int
from featurelens.errors import FeaturelensError
from featurelens.network.modes import DEFAULT_MODE, MODE_ALIASES, MODES

SHOW_SKIPPED = 20  # skipped files listed on the terminal (all of them are in bundle.json)


def read_selection(args: argparse.Namespace) -> Any:
    """The dataset of ``args.images`` (folder tree, CSV or files), its labels replaced by ``--labels-from``,
    then selected with ``--per-class`` / ``--limit`` / ``--select-seed``."""
    from featurelens.network.build import read_labels, true_class_for
    from featurelens.network.datasets import DatasetItem, read_dataset, select

    dataset = read_dataset(args.images)
    if args.labels_from:
        labels: Any = "dirname" if args.labels_from == "dirname" else read_labels(args.labels_from)
        dataset.items = [DatasetItem(it.image_id, it.path, true_class_for(str(it.path), labels))
                         for it in dataset.items]
    chosen = select(dataset, per_class=args.per_class, limit=args.limit, seed=args.select_seed,
                    check="full" if args.check_images else "header")
    if not chosen.items:
        reasons = "; ".join(f"{s.where}: {s.reason}" for s in chosen.skipped[:3])
        raise FeaturelensError(f"no readable images ({len(chosen.skipped)} skipped: {reasons})")
    return chosen


def print_skipped(skipped: list[dict[str, str]], where: str) -> None:
    if not skipped:
        return
    print(f"skipped {len(skipped)} file(s) or row(s) (listed in {where}):", file=sys.stderr)
    for s in skipped[:SHOW_SKIPPED]:
        print(f"  {s['where']}: {s['reason']}", file=sys.stderr)
    if len(skipped) > SHOW_SKIPPED:
        print(f"  ... and {len(skipped) - SHOW_SKIPPED} more", file=sys.stderr)


def executor_of(args: argparse.Namespace) -> Any:
    """The in-process executor, or a Ray one for ``--ray`` / ``--ray-address``."""
    from featurelens.network.executor import make_executor

    if not (args.ray or args.ray_address):
        return make_executor()
    return make_executor(True, address=args.ray_address, workers=args.ray_workers, cpus_per_worker=1.0,
                         max_retries=args.retries)


def run_network(args: argparse.Namespace) -> int:
    from featurelens.models import load_model
    from featurelens.network.build import LoadModel, build_dataset_bundle
    from featurelens.network.datasets import resolve_classes
    from featurelens.network.layers import resolve_units
    from featurelens.network.locking import BundleLock
    from featurelens.network.pipeline import NetworkParams
    from featurelens.network.viewer import write_viewer

    out = Path(args.out)
    BundleLock(out).check()  # another run writing into --out: refuse before loading anything
    dataset = read_selection(args)
    print(f"dataset: {dataset.summary()}", file=sys.stderr)
    if args.format == 2 and (args.resume or args.ray or args.ray_address):
        raise FeaturelensError("--resume, --ray and --ray-address write the sharded layout; drop --format 2")
    if (out / "bundle.json").exists() and not args.resume:
        raise FeaturelensError(f"{out} already holds a bundle; resume it with --resume, or choose an empty "
                               "output folder")
    spec = load_model(args.model, trust=args.trust)
    layers = resolve_units(spec.model, spec.sample_input(), args.layers)
    classes = None
    if dataset.labels:
        classes = resolve_classes(dataset, spec.class_names or [], args.class_map)
        for line in classes.problems():
            print(f"warning: {line}; its images get no true class", file=sys.stderr)
    elif args.class_map:
        raise FeaturelensError("--class-map needs a labelled dataset (a folder tree or a 'path,label' CSV)")
    on_ray = bool(args.ray or args.ray_address)
    params = NetworkParams(mode="stable" if args.fast else args.mode, effect=not args.no_effect,
                           workers=1 if on_ray else args.workers, seed=args.seed,
                           stability_runs=args.stability, prune_rule=args.prune,
                           cluster_map_rule=args.cluster_maps, smooth_sigma=args.smooth or None)
    if args.format == 2:
        bundle = _write_v2(spec, dataset, classes, out, layers, params, args)
        skipped = [{"where": s.where, "reason": s.reason} for s in dataset.skipped]
    else:
        factory = LoadModel(args.model, tuple(u.name for u in layers), args.trust, args.threads or 1) if on_ray \
            else None
        if args.threads and not on_ray:
            import torch

            torch.set_num_threads(args.threads)
        result = build_dataset_bundle(
            spec, dataset, out, layers=layers, params=params, classes=classes, executor=executor_of(args),
            factory=factory, resume=args.resume, shard_size=args.shard_size, batch_size=args.batch_size,
            encoding=args.encoding, display_size=args.display_size,
            write_on="driver" if args.gather_shards else "worker", progress=not args.quiet,
            dataset_info={"sources": [str(s) for s in args.images], "per_class": args.per_class,
                          "limit": args.limit, "seed": args.select_seed},
        )
        bundle, skipped = result.bundle, result.skipped
        stats = result.run.stats
        if result.run.resumed_from:
            print(f"resumed: {result.run.resumed_from} image(s) were already in the bundle", file=sys.stderr)
        if stats.retries:
            print(f"{stats.retries} batch(es) retried after a worker died", file=sys.stderr)
    print_skipped(skipped, f"{out / 'bundle.json'}" if args.format != 2 else "the terminal only")
    n_clusters = sum(len(im.clusters) for im in bundle.images)
    if not bundle.layers:
        raise FeaturelensError(f"no image could be explained ({len(skipped)} skipped)")
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


def _write_v2(spec: Any, dataset: Any, classes: Any, out: Path, layers: list[Any], params: Any,
              args: argparse.Namespace) -> Any:
    """The version-2 layout (a file per map), in-process: ``--format 2``."""
    from tqdm import tqdm

    from featurelens.network.build import build_bundle, dataset_ids

    labels = {}
    for it in dataset.items:
        if it.label is not None:
            labels[str(it.path)] = classes.true_class(it.label)[0] if classes is not None else it.label
    images = dict(zip(dataset_ids(dataset.items), (str(it.path) for it in dataset.items)))
    bar = tqdm(total=len(images) * len(layers), unit="layer", desc="network", disable=args.quiet, file=sys.stderr)
    try:
        return build_bundle(spec, images, out, layers=layers, params=params,
                            labels={k: v for k, v in labels.items() if v is not None},
                            batch_size=args.batch_size, progress=bar.update)
    finally:
        bar.close()


def run_validate(args: argparse.Namespace) -> int:
    from featurelens.network.bundle import validate_bundle

    problems = validate_bundle(args.bundle)
    if problems:
        for p in problems:
            print(f"{args.bundle}: {p}", file=sys.stderr)
        return 1
    print(f"{args.bundle}: valid bundle")
    return 0


def run_upgrade(args: argparse.Namespace) -> int:
    from featurelens.network.bundle import upgrade_bundle

    bundle = upgrade_bundle(args.old, args.new, shard_size=args.shard_size, encoding=args.encoding)
    print(f"wrote {args.new}: version-3 bundle of {len(bundle.images)} images "
          f"({sum(len(im.clusters) for im in bundle.images)} clusters) from {args.old}")
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
        "explanation bundle (bundle.json + shards holding the maps at feature resolution and each image once).",
    )
    p.add_argument("images", nargs="+", metavar="DATASET",
                   help="a folder tree ROOT/<class>/<image> (class = sub-folder), a CSV of 'path,label' rows "
                   "(paths relative to the CSV), or image files and folders of images (no labels)")
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
                   help="override the dataset's labels: 'dirname' (the image's folder name) or a CSV file "
                   "with file,label rows")
    d = p.add_argument_group("dataset")
    d.add_argument("--per-class", type=positive_int, default=None, metavar="N",
                   help="at most N images per label (sorted, then a seeded sample)")
    d.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="at most N images overall (after --per-class; sorted, then a seeded sample)")
    d.add_argument("--select-seed", type=int, default=0, metavar="S", help="seed of that sample (default: 0)")
    d.add_argument("--class-map", default=None, metavar="CSV",
                   help="'label,class' rows mapping dataset labels to model class names or indices (default: "
                   "labels match class names case-insensitively, '_' = space)")
    d.add_argument("--check-images", action="store_true",
                   help="decode every image while selecting (default: read headers only; a file that fails to "
                   "decode later is skipped and listed all the same)")
    s3 = p.add_argument_group("storage, resuming and Ray")
    s3.add_argument("--format", type=int, choices=[2, 3], default=3,
                    help="bundle layout: 3 = shards (default), 2 = a .npy, a PNG and an overlay PNG per cluster")
    s3.add_argument("--shard-size", type=positive_int, default=8, metavar="N",
                    help="images per shard, also the unit of work given to a Ray worker (default: %(default)s)")
    s3.add_argument("--encoding", choices=["float16", "uint8"], default="float16",
                    help="how maps are stored in shards (default: %(default)s)")
    s3.add_argument("--display-size", type=positive_int, default=256, metavar="PX",
                    help="longest side of the stored display image, never enlarged (default: %(default)s)")
    s3.add_argument("--resume", action="store_true",
                    help="continue an interrupted run into --out with the same settings: images already "
                    "stored are skipped")
    s3.add_argument("--ray", action="store_true", help="run on a local Ray instance started for this run")
    s3.add_argument("--ray-address", default=None, metavar="ADDR",
                    help="join a running Ray cluster (HEAD:6379, or 'auto'); see `ray start --head`")
    s3.add_argument("--ray-workers", type=positive_int, default=None, metavar="N",
                    help="Ray workers (actors), one CPU each; also the num_cpus of a local instance "
                    "(default: the CPUs of this machine)")
    s3.add_argument("--threads", type=positive_int, default=None, metavar="N",
                    help="torch threads per worker (default: 1 on Ray, torch's default in-process)")
    s3.add_argument("--retries", type=non_negative_int, default=3, metavar="N",
                    help="times a batch is retried when its Ray worker dies (default: %(default)s)")
    s3.add_argument("--gather-shards", action="store_true",
                    help="workers hand their shards to this process, which writes them (for a cluster "
                    "whose machines do not share the --out folder)")
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
    u = bsub.add_parser("upgrade", help="convert a version-1 or -2 bundle into a new version-3 (sharded) bundle")
    u.add_argument("old", help="the bundle folder to read (left unchanged)")
    u.add_argument("new", help="an empty folder for the version-3 bundle")
    u.add_argument("--shard-size", type=positive_int, default=64, metavar="N", help="images per shard")
    u.add_argument("--encoding", choices=["float16", "uint8"], default="float16")
    u.set_defaults(func=run_upgrade)
    w = bsub.add_parser("view", help="write the static HTML viewer into the bundle and print its path")
    w.add_argument("bundle", help="bundle folder")
    w.set_defaults(func=run_view)
