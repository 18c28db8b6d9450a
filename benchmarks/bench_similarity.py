#!/usr/bin/env python
"""Faithfulness and speed of similarity explanations (SFAM vs baselines).

Faithfulness — similarity deletion/insertion (RISE-style, ``featurelens.metrics.deletion_curve``):
pixels of image ``a`` are removed (replaced by a blurred copy) or added (onto the blurred copy) in the
order of the map of ``a``, most important first, and the similarity of ``a`` to the fixed embedding
of ``b`` is recomputed (cosine). Lower deletion AUC / higher insertion AUC is better. Methods: SFAM
(cosine CIS), SFAM with the head-blind cross-product CIS, Grad-CAM, Grad-CAM++, Stylianou et al.'s
decomposition, and a random map (uniform noise at feature resolution, upsampled; seeded).

* ``shapes_metric``: held-out animal-shape-mnist pairs, mostly same class (``--pairs`` same-class
  pairs + a fifth as many different-class pairs).
* ``efficientnet_lite0`` pooled features on real photos (scikit-image + scikit-learn samples).
  **Same-class pairs here are two different random crops of the same photo** (the second one
  sometimes mirrored); different-class pairs are crops of two different photos.

Speed: SFAM per pair as a ratio to the bare forward pass of the pair (same run, interleaved, median
of repeats, process CPU time with one torch thread so other processes do not skew it), Grad-CAM
likewise; retrieval explanation of the top 10 over a 1,000-image gallery whose
embeddings are cached (time, and the ratio to one forward of 11 images).

    .venv/bin/python benchmarks/bench_similarity.py            # full (several minutes on 2 busy cores)
    .venv/bin/python benchmarks/bench_similarity.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from featurelens.metrics import deletion_curve
from featurelens.metrics.scoring import similarity_score_fn
from featurelens.similarity.embedding import Embedder, load_embedder
from featurelens.similarity.pair import explain_pair
from featurelens.similarity.retrieval import explain_retrieval, index_gallery

#: CPU time of this process (with one torch thread this is robust to other processes on a shared machine)
CLOCK = time.process_time

METHODS = [("sfam", "cosine"), ("sfam", "cross_product"), ("gradcam", None), ("gradcam++", None), ("stylianou", None), ("random", None)]


def method_label(method: str, rule: str | None) -> str:
    return f"sfam[{rule}]" if method == "sfam" else method


def maps_for(embedder: Embedder, xa: torch.Tensor, xb: torch.Tensor, method: str, rule: str | None, seed: int) -> torch.Tensor:
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        fa = embedder.run(xa[:1]).activations
        h, w = fa.shape[-2:]
        noise = torch.rand(xa.shape[0], 1, h, w, generator=g)
        return torch.nn.functional.interpolate(noise, size=xa.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    out = []
    for i in range(0, xa.shape[0], 16):
        out.append(explain_pair(embedder, xa[i : i + 16], xb[i : i + 16], method, "cosine", rule).maps_a)
    return torch.cat(out)


def faithfulness(embedder: Embedder, xa: torch.Tensor, xb: torch.Tensor, same: torch.Tensor, steps: int, batch: int) -> dict:
    e_b = embedder.embed(xb)
    score_fn = similarity_score_fn(embedder.model, e_b, "cosine")
    rows = {}
    for method, rule in METHODS:
        if rule == "cross_product" and embedder.head.projection is None:
            continue  # identical to the cosine rule when the head has no projection
        t0 = time.perf_counter()
        maps = maps_for(embedder, xa, xb, method, rule, seed=0)
        row = {}
        for mode in ("deletion", "insertion"):
            curve = deletion_curve(score_fn, xa, maps, steps=steps, mode=mode, baseline="blur", batch_size=batch)
            auc = curve.auc
            row[mode] = float(auc.mean())
            row[f"{mode}_same"] = float(auc[same].mean())
            if (~same).any():
                row[f"{mode}_diff"] = float(auc[~same].mean())
            row[f"{mode}_per_pair"] = auc.tolist()
        row["seconds"] = time.perf_counter() - t0
        rows[method_label(method, rule)] = row
        print(f"  {method_label(method, rule):20s} deletion {row['deletion']:.4f}  insertion {row['insertion']:.4f}  ({row['seconds']:.0f} s)", flush=True)
    # paired comparison SFAM vs random: fraction of pairs where SFAM's deletion AUC is lower
    s, r = torch.tensor(rows["sfam[cosine]"]["deletion_per_pair"]), torch.tensor(rows["random"]["deletion_per_pair"])
    rows["_sfam_beats_random_deletion_fraction"] = float((s < r).float().mean())
    return rows


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def shapes_pairs(n_same: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from featurelens.models.metric_shapes import load_shapes_dataset, split_indices, to_tensor

    x, y = load_shapes_dataset()
    _, te = split_indices(len(y), 0.2, seed=0)
    x, y = x[te], y[te]
    rng = np.random.default_rng(seed)
    a_idx, b_idx, same = [], [], []
    for i in range(n_same):
        c = i % 10
        members = np.flatnonzero(y == c)
        i1, i2 = rng.choice(members, 2, replace=False)
        a_idx.append(i1), b_idx.append(i2), same.append(True)
    for _ in range(max(1, n_same // 5)):
        c1, c2 = rng.choice(10, 2, replace=False)
        a_idx.append(rng.choice(np.flatnonzero(y == c1))), b_idx.append(rng.choice(np.flatnonzero(y == c2))), same.append(False)
    return to_tensor(x[a_idx]), to_tensor(x[b_idx]), torch.tensor(same)


def photos() -> dict[str, Image.Image]:
    from sklearn.datasets import load_sample_images

    from featurelens.imaging import sample_images

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera"]
    out = sample_images(names)
    for name, arr in zip(["china", "flower"], load_sample_images().images):
        out[name] = Image.fromarray(arr)
    return out


def random_crop(im: Image.Image, rng: np.random.Generator, flip: bool) -> Image.Image:
    w, h = im.size
    s = rng.uniform(0.55, 0.9)
    cw, ch = int(w * s), int(h * s)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    c = im.crop((x0, y0, x0 + cw, y0 + ch))
    return ImageOps.mirror(c) if flip else c


def photo_pairs(embedder: Embedder, per_photo: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    ph = photos()
    names = list(ph)
    a, b, same = [], [], []
    for name in names:
        for j in range(per_photo):
            a.append(random_crop(ph[name], rng, False)), b.append(random_crop(ph[name], rng, j % 2 == 1)), same.append(True)
    for i, name in enumerate(names):
        other = names[(i + 1 + int(rng.integers(0, len(names) - 1))) % len(names)]
        a.append(random_crop(ph[name], rng, False)), b.append(random_crop(ph[other], rng, False)), same.append(False)
    return embedder.prepare(a), embedder.prepare(b), torch.tensor(same)


# ---------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------
def speed(embedder: Embedder, xa: torch.Tensor, xb: torch.Tensor, repeats: int) -> dict:
    both = torch.cat([xa, xb])

    def bare() -> None:
        with torch.no_grad():
            embedder.model(both)

    def sfam() -> None:
        explain_pair(embedder, xa, xb, "sfam")

    def gradcam() -> None:
        explain_pair(embedder, xa, xb, "gradcam")

    fns = {"forward": bare, "sfam": sfam, "gradcam": gradcam}
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():  # interleaved so load changes hit all alike
            t0 = CLOCK()
            f()
            times[k].append(CLOCK() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "pairs": int(xa.shape[0]),
        "forward_ms": med["forward"] * 1e3,
        "sfam_ms": med["sfam"] * 1e3,
        "gradcam_ms": med["gradcam"] * 1e3,
        "sfam_ratio": med["sfam"] / med["forward"],
        "gradcam_ratio": med["gradcam"] / med["forward"],
    }


def retrieval_speed(embedder: Embedder, n: int, top_k: int, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    ph = list(photos().values())
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as cache:
        for i in range(n):
            im = random_crop(ph[i % len(ph)], rng, bool(i % 2)).resize((160, 160))
            im.save(Path(d) / f"g{i:04d}.jpg", quality=85)
        query = random_crop(ph[1], rng, False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            index_gallery(embedder, d, cache_dir=cache)
            t1 = time.perf_counter()
            index = index_gallery(embedder, d, cache_dir=cache)
            t2 = time.perf_counter()
        assert index.cache_hits == n and index.computed == 0
        explain_retrieval(embedder, query, index, top_k=top_k)  # warm-up
        ts, fw = [], []
        x11 = embedder.prepare([query] * (top_k + 1))
        for _ in range(repeats):
            t = CLOCK()
            explain_retrieval(embedder, query, index, top_k=top_k)
            ts.append(CLOCK() - t)
            t = CLOCK()
            with torch.no_grad():
                embedder.model(x11)
            fw.append(CLOCK() - t)
    return {
        "gallery": n,
        "top_k": top_k,
        "index_first_s": t1 - t0,
        "index_cached_s": t2 - t1,
        "explain_top_k_s": statistics.median(ts),
        "forward_of_k_plus_1_s": statistics.median(fw),
        "explain_ratio_to_forward": statistics.median(ts) / statistics.median(fw),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    ap.add_argument("--skip", nargs="*", default=[], choices=["shapes", "lite0", "speed", "retrieval"])
    ap.add_argument("--steps", type=int, default=6, help="deletion/insertion steps on EfficientNet-Lite0 (shapes: 28)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps ratios stable on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    q = args.quick
    results: dict = {}
    lite0 = load_embedder("efficientnet_lite0")
    if "shapes" not in args.skip:
        shapes = load_embedder("shapes_metric")
        xa, xb, same = shapes_pairs(10 if q else 60)
        print(f"shapes_metric: {int(same.sum())} same-class + {int((~same).sum())} different-class held-out pairs", flush=True)
        results["shapes_metric"] = faithfulness(shapes, xa, xb, same, steps=28, batch=256)
    if "lite0" not in args.skip:
        xa, xb, same = photo_pairs(lite0, 1 if q else 4)
        print(f"efficientnet_lite0: {int(same.sum())} same-photo crop pairs + {int((~same).sum())} different-photo pairs", flush=True)
        results["efficientnet_lite0"] = faithfulness(lite0, xa, xb, same, steps=4 if q else args.steps, batch=32)
    if "speed" not in args.skip:
        xa, xb, _ = photo_pairs(lite0, 1)
        for b in (1, 8):
            r = speed(lite0, xa[:b], xb[:b], 3 if q else 15)
            results[f"speed_lite0_{b}pairs"] = r
            print(f"speed, {b} pair(s), EfficientNet-Lite0: forward {r['forward_ms']:.1f} ms, SFAM {r['sfam_ratio']:.3f}x, "
                  f"Grad-CAM {r['gradcam_ratio']:.3f}x", flush=True)
    if "retrieval" not in args.skip:
        r = retrieval_speed(lite0, 100 if q else 1000, 10, 3 if q else 7)
        results["retrieval_lite0"] = r
        print(f"retrieval: gallery {r['gallery']}, index {r['index_first_s']:.1f} s (cached {r['index_cached_s']:.2f} s), "
              f"explain top {r['top_k']}: {r['explain_top_k_s']:.2f} s = {r['explain_ratio_to_forward']:.2f}x "
              f"a forward of {r['top_k'] + 1} images", flush=True)
    for model in ("shapes_metric", "efficientnet_lite0"):
        if model in results:
            print(f"\n{model}: mean AUC over pairs (blur baseline); deletion lower is better, insertion higher")
            print(f"{'method':20s} {'deletion':>9s} {'del same':>9s} {'insertion':>9s} {'ins same':>9s}")
            for name, row in results[model].items():
                if name.startswith("_"):
                    continue
                print(f"{name:20s} {row['deletion']:9.4f} {row['deletion_same']:9.4f} {row['insertion']:9.4f} {row['insertion_same']:9.4f}")
            print(f"SFAM deletion AUC below random's on {results[model]['_sfam_beats_random_deletion_fraction']:.0%} of pairs")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
