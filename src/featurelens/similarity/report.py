"""Files for pair and retrieval explanations: overlays, ``.npy`` maps, manifests, a grid and an HTML page."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from featurelens.imaging import as_pil, load_image, overlay, resize_map_np
from featurelens.similarity.pair import ImageLike, PairExplanation
from featurelens.similarity.retrieval import RetrievalResult


def map_at(m: Any, size_hw: Sequence[int]) -> np.ndarray:
    """A ``[H, W]`` map resized to ``size_hw`` (float32 in [0, 1])."""
    arr = m.detach().float().cpu().numpy() if hasattr(m, "detach") else np.asarray(m, dtype=np.float32)
    return np.clip(resize_map_np(arr, size_hw), 0.0, 1.0).astype(np.float32)


def save_pair(
    ex: PairExplanation,
    image_a: ImageLike,
    image_b: ImageLike,
    out_dir: str | Path,
    *,
    names: tuple[str, str] = ("a", "b"),
    index: int = 0,
    top_k: int = 10,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write overlays (PNG) and maps (``.npy``, at each image's own resolution) for pair ``index`` and a
    ``manifest.json`` with the similarity/distance and the top contributing channels."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for side, image, name, maps in (("a", image_a, names[0], ex.maps_a), ("b", image_b, names[1], ex.maps_b)):
        pil = as_pil(image)
        m = map_at(maps[index], (pil.height, pil.width))
        npy, png = out / f"{side}_{name}_{ex.method}.npy", out / f"{side}_{name}_{ex.method}.png"
        np.save(npy, m)
        Image.fromarray(overlay(pil, m)).save(png)
        files[side] = {"image": name, "overlay": png.name, "map": npy.name, "size": [pil.width, pil.height]}
    score = float(ex.score[index])
    manifest: dict[str, Any] = {
        "method": ex.method,
        "metric": ex.metric,
        "similarity" if ex.metric == "cosine" else "distance": score,
        "files": files,
        "top_channels": ex.top_channels(index, top_k),
        "meta": {k: v for k, v in ex.meta.items() if isinstance(v, (str, int, float, bool))},
    }
    if ex.remainder is not None:
        manifest["cis_sum"] = float(ex.weights_a[index].sum()) if ex.weights_a is not None else None
        manifest["remainder"] = float(ex.remainder[index])
    manifest.update(extra or {})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def _thumb(image: Image.Image | np.ndarray, cell: int) -> Image.Image:
    pil = as_pil(image)
    pil.thumbnail((cell, cell))
    canvas = Image.new("RGB", (cell, cell), "white")
    canvas.paste(pil, ((cell - pil.width) // 2, (cell - pil.height) // 2))
    return canvas


def retrieval_grid(result: RetrievalResult, query_image: ImageLike, cell: int = 160,
                   hit_image: Callable[[Path], Image.Image] = load_image) -> Image.Image:
    """The query row, then one row per hit: query map for that pair, the hit, the hit's map.

    ``hit_image`` reads a retrieved file as the model saw it (face models: its aligned chip)."""
    q = as_pil(query_image)
    rows = 1 + len(result.hits)
    pad, text = 4, 16
    width = 3 * (cell + pad) + pad
    height = rows * (cell + text + pad) + pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    y = pad
    grid.paste(_thumb(q, cell), (pad, y + text))
    draw.text((pad, y), "query", fill="black")
    y += cell + text + pad
    for hit in result.hits:
        h = hit_image(hit.path)
        cells = [
            (overlay(q, map_at(hit.map_query, (q.height, q.width))), f"query map (#{hit.rank})"),
            (np.asarray(h), f"#{hit.rank} {hit.path.name[:14]} {hit.score:.3f}"),
            (overlay(h, map_at(hit.map_hit, (h.height, h.width))), "retrieved map"),
        ]
        for j, (im, label) in enumerate(cells):
            x = pad + j * (cell + pad)
            grid.paste(_thumb(im, cell), (x, y + text))
            draw.text((x, y), label, fill="black")
        y += cell + text + pad
    return grid


def retrieval_page(result: RetrievalResult, query_image: ImageLike, grid_png: str,
                   hit_image: Callable[[Path], Image.Image] = load_image) -> str:
    """A self-contained HTML page (images inlined) for a retrieval explanation."""
    from featurelens.report.html import Raw, figure, page, table

    q = as_pil(query_image)
    rows = []
    for hit in result.hits:
        h = hit_image(hit.path)
        rows.append(
            [
                hit.rank,
                hit.path.name,
                f"{hit.score:.4f}",
                figure(overlay(q, map_at(hit.map_query, (q.height, q.width))), "query", max_size=200, fmt="jpeg"),
                figure(overlay(h, map_at(hit.map_hit, (h.height, h.width))), "retrieved", max_size=200, fmt="jpeg"),
                ", ".join(f"{c['channel']} ({c['weight']:.3g})" for c in hit.top_channels),
            ]
        )
    score_name = "cosine similarity" if result.metric == "cosine" else "Euclidean distance"
    summary = table(
        [
            ["query", result.query],
            ["method", result.method],
            ["metric", score_name],
            ["gallery images ranked", result.gallery_size],
            ["files skipped (unreadable)", len(result.skipped)],
        ]
    )
    skipped = ""
    if result.skipped:
        skipped = table([[p.name, why] for p, why in result.skipped], ["skipped file", "reason"])
    body_hits = table(rows, ["rank", "file", score_name, "map on query", "map on retrieved", "top channels (CIS)"])
    sections = [
        ("Query", Raw(figure(q, "query", max_size=320, fmt="jpeg") + summary + skipped)),
        ("Top matches", body_hits),
        ("Grid", figure(grid_png, "query row, then per match: query map, match, match map", embed=True)),
    ]
    return page("featurelens retrieval", sections, subtitle=f"{result.method.upper()} maps for the top {len(result.hits)} matches")
