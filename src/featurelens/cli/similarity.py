"""``featurelens similarity A B`` and ``featurelens retrieve QUERY --gallery DIR``.

Thin shells over :mod:`featurelens.similarity`: the Python calls are :func:`explain_pair_files` and
:func:`retrieve_files`.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

from featurelens.cli import common

DEFAULT_OUT = "featurelens-similarity"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    models = "efficientnet_lite0, shapes_metric"  # the registered embedders (not imported here: keeps start-up free of torch)
    p = sub.add_parser(
        "similarity",
        help="SFAM maps explaining why two images are similar (embedding models)",
        description="Explain the similarity of two images under an embedding model. Writes an overlay PNG and "
        "a .npy map for each image and manifest.json with the similarity (or distance) and the top channels.",
    )
    p.add_argument("image_a", metavar="IMAGE_A")
    p.add_argument("image_b", metavar="IMAGE_B")
    _common_args(p, models)
    p.add_argument("--method", default="sfam", choices=["sfam", "gradcam", "gradcam++", "stylianou"])
    p.add_argument("--rule", default=None, help="SFAM CIS rule (default: by metric; see docs/similarity.md)")
    p.add_argument("--out", "-o", default=DEFAULT_OUT, metavar="DIR")
    p.set_defaults(func=run_similarity)

    r = sub.add_parser(
        "retrieve",
        help="rank a gallery folder for a query image and explain the top matches",
        description="Embed a gallery folder (embeddings cached on disk), rank it for the query and explain the "
        "top-k pairs with maps on the query and on each match. Writes grid.png, index.html and manifest.json.",
    )
    r.add_argument("query", metavar="QUERY")
    r.add_argument("--gallery", required=True, metavar="DIR")
    r.add_argument("--top-k", "-k", type=int, default=5)
    _common_args(r, models)
    r.add_argument("--method", default="sfam", choices=["sfam", "gradcam", "gradcam++", "stylianou"])
    r.add_argument("--cache-dir", default=None, help="embedding cache folder (default ~/.cache/featurelens/embeddings)")
    r.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    r.add_argument("--out", "-o", default="featurelens-retrieval", metavar="DIR")
    r.set_defaults(func=run_retrieve)


def _common_args(p: argparse.ArgumentParser, models: str) -> None:
    p.add_argument("--model", default="efficientnet_lite0", help=f"embedding model: {models}, or a checkpoint path")
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    p.add_argument("--trust", action="store_true", help="allow loading a pickled model checkpoint (runs its code)")


def _names(a: Path, b: Path) -> tuple[str, str]:
    na, nb = a.stem, b.stem
    return (na, nb) if na != nb else (f"{na}_1", f"{nb}_2")


def explain_pair_files(
    image_a: str | Path, image_b: str | Path, out: str | Path, *, model: str = "efficientnet_lite0",
    metric: str = "cosine", method: str = "sfam", rule: str | None = None, trust: bool = False,
) -> dict[str, Any]:
    """Load both images (any sizes), explain the pair and write the files; returns the manifest."""
    from featurelens.imaging import load_image
    from featurelens.similarity.embedding import load_embedder
    from featurelens.similarity.pair import explain_pair
    from featurelens.similarity.report import save_pair

    a, b = Path(image_a), Path(image_b)
    ims = [load_image(a), load_image(b)]
    out_dir = common.output_dir(out)
    embedder = load_embedder(model, trust=trust)
    ex = explain_pair(embedder, ims[0], ims[1], method=method, metric=metric, rule=rule)
    return save_pair(ex, ims[0], ims[1], out_dir, names=_names(a, b),
                     extra={"model": embedder.name, "image_a": str(a), "image_b": str(b)})


def run_similarity(args: argparse.Namespace) -> int:
    m = explain_pair_files(args.image_a, args.image_b, args.out, model=args.model, metric=args.metric,
                           method=args.method, rule=args.rule, trust=args.trust)
    key = "similarity" if args.metric == "cosine" else "distance"
    top = ", ".join(str(c["channel"]) for c in m["top_channels"][:5])
    common.echo(f"{key} {m[key]:.4f} ({args.method}, {args.metric}); top channels: {top}; wrote {args.out}/")
    return 0


def retrieve_files(
    query: str | Path, gallery: str | Path, out: str | Path, *, top_k: int = 5, model: str = "efficientnet_lite0",
    metric: str = "cosine", method: str = "sfam", cache_dir: str | None = None, use_cache: bool = True,
    trust: bool = False,
) -> dict[str, Any]:
    """Index the gallery, explain the top-k and write grid.png, index.html and manifest.json."""
    from featurelens.errors import FeaturelensError
    from featurelens.imaging import load_image
    from featurelens.similarity.embedding import load_embedder
    from featurelens.similarity.report import retrieval_grid, retrieval_page
    from featurelens.similarity.retrieval import explain_retrieval, index_gallery

    if top_k < 1:
        raise FeaturelensError("--top-k must be at least 1")
    q = load_image(query)
    if not Path(gallery).is_dir():
        raise FeaturelensError(f"{gallery}: gallery is not a folder")
    out_dir = common.output_dir(out)
    embedder = load_embedder(model, trust=trust)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = index_gallery(embedder, gallery, cache_dir=cache_dir, use_cache=use_cache)
    for w in caught:
        common.warn(str(w.message))
    t1 = time.perf_counter()
    result = explain_retrieval(embedder, q, index, top_k=top_k, metric=metric, method=method)
    result.query = str(query)
    grid = retrieval_grid(result, q)
    grid.save(out_dir / "grid.png")
    (out_dir / "index.html").write_text(retrieval_page(result, q, str(out_dir / "grid.png")), encoding="utf-8")
    manifest = {
        "query": str(query), "gallery": str(gallery), "model": embedder.name, "metric": metric, "method": method,
        "gallery_images": len(index.paths), "skipped": [{"file": str(p), "reason": r} for p, r in index.skipped],
        "skipped_count": len(index.skipped), "cache_hits": index.cache_hits, "embedded": index.computed,
        "seconds": {"index": t1 - t0, **result.seconds},
        "hits": [{"rank": h.rank, "file": str(h.path), "score": h.score, "top_channels": h.top_channels} for h in result.hits],
        "files": ["grid.png", "index.html"],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def run_retrieve(args: argparse.Namespace) -> int:
    m = retrieve_files(args.query, args.gallery, args.out, top_k=args.top_k, model=args.model, metric=args.metric,
                       method=args.method, cache_dir=args.cache_dir, use_cache=not args.no_cache, trust=args.trust)
    for h in m["hits"]:
        common.echo(f"#{h['rank']} {h['score']:.4f} {h['file']}")
    skipped = f", {m['skipped_count']} file(s) skipped" if m["skipped_count"] else ""
    common.echo(f"ranked {m['gallery_images']} gallery image(s){skipped}; wrote {args.out}/index.html")
    return 0
