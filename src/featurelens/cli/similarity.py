"""``featurelens similarity A B`` and ``featurelens retrieve QUERY --gallery DIR``.

Thin shells over :mod:`featurelens.similarity`: the Python calls are :func:`explain_pair_files` and
:func:`retrieve_files`. With a face model (``--model dlib_face``) the photos go through the face front
end (:mod:`featurelens.similarity.face_pair`): detect, align, explain the chips, warp the maps back.
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
    models = "efficientnet_lite0, shapes_metric, dlib_face"  # the registered embedders (not imported here: keeps start-up free of torch)
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
    p.add_argument("--threshold", type=float, default=None,
                   help="same/different decision: distance < T (default 0.6 for dlib_face), or cosine > T")
    p.add_argument("--face", default=None, metavar="INDEX",
                   help="face models: which detected face to use, 0 = largest (default); 'I,J' for image a and b")
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
    p.add_argument("--metric", default=None, choices=["cosine", "euclidean"],
                   help="default: euclidean for face models (dlib compares descriptors by distance), else cosine")
    p.add_argument("--trust", action="store_true", help="allow loading a pickled model checkpoint (runs its code)")


def _names(a: Path, b: Path) -> tuple[str, str]:
    na, nb = a.stem, b.stem
    return (na, nb) if na != nb else (f"{na}_1", f"{nb}_2")


def _metric(metric: str | None, embedder: Any) -> str:
    from featurelens.similarity.face_pair import is_face_model

    return metric or ("euclidean" if is_face_model(embedder) else "cosine")


def parse_face(text: str | None) -> tuple[int | None, int | None]:
    """``--face``: ``None``, ``I`` (both images) or ``I,J``; one-line error otherwise."""
    from featurelens.errors import FeaturelensError

    if text is None:
        return None, None
    parts = [t.strip() for t in str(text).split(",")]
    try:
        vals = [int(t) for t in parts]
    except ValueError:
        raise FeaturelensError(f"--face must be an index (0 = largest face) or 'I,J', got {text!r}") from None
    if len(vals) not in (1, 2) or min(vals) < 0:
        raise FeaturelensError(f"--face must be one or two indices >= 0, got {text!r}")
    return (vals[0], vals[-1])


def explain_pair_files(
    image_a: str | Path, image_b: str | Path, out: str | Path, *, model: str = "efficientnet_lite0",
    metric: str | None = None, method: str = "sfam", rule: str | None = None, trust: bool = False,
    threshold: float | None = None, face: str | None = None,
) -> dict[str, Any]:
    """Load both images (any sizes), explain the pair and write the files; returns the manifest.

    Face models detect and align each photo first and write maps on the chips and on the photos."""
    from featurelens.imaging import load_image
    from featurelens.similarity.embedding import load_embedder
    from featurelens.similarity.face_pair import decide, explain_faces, is_face_model, save_face_pair
    from featurelens.similarity.pair import explain_pair
    from featurelens.similarity.report import save_pair

    a, b = Path(image_a), Path(image_b)
    ims = [load_image(a), load_image(b)]
    faces = parse_face(face)
    out_dir = common.output_dir(out)
    embedder = load_embedder(model, trust=trust)
    metric = _metric(metric, embedder)
    extra = {"model": embedder.name, "image_a": str(a), "image_b": str(b)}
    if is_face_model(embedder):
        res = explain_faces(embedder, ims[0], ims[1], method=method, metric=metric, rule=rule, face_a=faces[0],
                            face_b=faces[1], threshold=threshold, names=(str(a), str(b)))
        return save_face_pair(res, ims[0], ims[1], out_dir, names=_names(a, b), extra=extra)
    if face is not None:
        from featurelens.errors import FeaturelensError

        raise FeaturelensError(f"--face applies to face models only (dlib_face), not {embedder.name}")
    ex = explain_pair(embedder, ims[0], ims[1], method=method, metric=metric, rule=rule)
    m = save_pair(ex, ims[0], ims[1], out_dir, names=_names(a, b), extra=extra)
    if threshold is not None:
        m.update(threshold=threshold, decision=decide(float(ex.score[0]), metric, threshold))
    return m


def run_similarity(args: argparse.Namespace) -> int:
    m = explain_pair_files(args.image_a, args.image_b, args.out, model=args.model, metric=args.metric,
                           method=args.method, rule=args.rule, trust=args.trust, threshold=args.threshold,
                           face=args.face)
    key = "similarity" if m["metric"] == "cosine" else "distance"
    top = ", ".join(str(c["channel"]) for c in m["top_channels"][:5])
    decision = ""
    if m.get("decision"):
        op = "<" if m["metric"] == "euclidean" else ">"
        same = m["decision"] == "same"
        decision = f"; {'same person' if same else 'different'} ({key} {op if same else 'not ' + op} {m['threshold']:g})"
    boxes = ""
    if "box" in m["files"]["a"]:
        boxes = f"; faces a {m['files']['a']['box']} b {m['files']['b']['box']}"
    common.echo(f"{key} {m[key]:.4f} ({args.method}, {m['metric']}){decision}{boxes}; top channels: {top}; wrote {args.out}/")
    return 0


def retrieve_files(
    query: str | Path, gallery: str | Path, out: str | Path, *, top_k: int = 5, model: str = "efficientnet_lite0",
    metric: str | None = None, method: str = "sfam", cache_dir: str | None = None, use_cache: bool = True,
    trust: bool = False,
) -> dict[str, Any]:
    """Index the gallery, explain the top-k and write grid.png, index.html and manifest.json.

    Face models rank the gallery photos by the distance of their largest face (photos without a face are
    skipped and listed) and explain the query chip against each retrieved chip."""
    from featurelens.errors import FeaturelensError
    from featurelens.imaging import load_image
    from featurelens.similarity.embedding import load_embedder
    from featurelens.similarity.face_pair import face_chip_loader, is_face_model
    from featurelens.similarity.faces import prepare_face
    from featurelens.similarity.report import retrieval_grid, retrieval_page
    from featurelens.similarity.retrieval import explain_retrieval, index_gallery

    if top_k < 1:
        raise FeaturelensError("--top-k must be at least 1")
    q = load_image(query)
    if not Path(gallery).is_dir():
        raise FeaturelensError(f"{gallery}: gallery is not a folder")
    out_dir = common.output_dir(out)
    embedder = load_embedder(model, trust=trust)
    metric = _metric(metric, embedder)
    faces = is_face_model(embedder)
    loader = face_chip_loader if faces else None
    q_input = prepare_face(q, name=str(query)).chip if faces else q
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = index_gallery(embedder, gallery, cache_dir=cache_dir, use_cache=use_cache, loader=loader,
                              loader_key="faces" if faces else "")
    for w in caught:
        common.warn(str(w.message))
    t1 = time.perf_counter()
    result = explain_retrieval(embedder, q_input, index, top_k=top_k, metric=metric, method=method, loader=loader)
    result.query = str(query)
    shown = {"hit_image": face_chip_loader} if faces else {}
    grid = retrieval_grid(result, q_input, **shown)
    grid.save(out_dir / "grid.png")
    (out_dir / "index.html").write_text(retrieval_page(result, q_input, str(out_dir / "grid.png"), **shown), encoding="utf-8")
    files = ["grid.png", "index.html"]
    boxes: dict[str, list[int]] = {}
    if faces:  # the chip maps warped back onto the original photos
        from featurelens.similarity.face_pair import photo_overlay
        from featurelens.similarity.faces import warp_to_photo

        qf = prepare_face(q, name=str(query))
        boxes[str(query)] = list(qf.box)
        for h in result.hits:
            photo = load_image(h.path)
            hf = prepare_face(photo, name=str(h.path))
            boxes[str(h.path)] = list(hf.box)
            for who, im, face, m in (("query", q, qf, h.map_query), ("hit", photo, hf, h.map_hit)):
                name = f"rank{h.rank}_{who}.png"
                photo_overlay(im, warp_to_photo(m, face), face).save(out_dir / name)
                files.append(name)
    manifest = {
        "query": str(query), "gallery": str(gallery), "model": embedder.name, "metric": metric, "method": method,
        "gallery_images": len(index.paths), "skipped": [{"file": str(p), "reason": r} for p, r in index.skipped],
        "skipped_count": len(index.skipped), "cache_hits": index.cache_hits, "embedded": index.computed,
        "seconds": {"index": t1 - t0, **result.seconds},
        "hits": [{"rank": h.rank, "file": str(h.path), "score": h.score, "top_channels": h.top_channels} for h in result.hits],
        "files": files,
    }
    if boxes:
        manifest["face_boxes"] = boxes
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
