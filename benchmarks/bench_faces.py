#!/usr/bin/env python
"""Face verification with dlib's face ResNet: which Euclidean CIS rule explains the distance best?

Data: the four shipped real photos (``featurelens/similarity/face_photos``: obama, obama2, obama3,
biden) and their mirror images, each detected and aligned to dlib's 150-px chip (8 chips). Pairs:
every same-person pair except a photo with its own mirror (12) and every Obama–Biden pair (12).
Both images of each pair are explained (48 explained chips).

Faithfulness (``featurelens.metrics.deletion_curve`` with ``similarity_score_fn(..., "euclidean")``,
score ``s = −‖e(x) − e^b‖`` with ``e^b`` fixed): the chip pixels are removed (replaced by a blurred
copy) or inserted (onto the blurred copy) in the order of the map, most important first
(ties, e.g. in an all-zero map, broken by a seeded 1e-6 pixel noise for every method alike); the AUC is
the area under ``s`` (minus the distance), so lower deletion AUC / higher insertion AUC is better and
differences are read pair by pair. Face-box energy: the share of the map's
mass inside the detector's face box (mapped into the chip); the random map gives the chance level.

Methods: SFAM with each Euclidean CIS rule (``euclidean``, ``euclidean_exact``, ``euclidean_gradact``),
Grad-CAM and Grad-CAM++ of ``−d`` (other embedding fixed), Stylianou et al.'s decomposition, a
centre prior (a fixed Gaussian on the chip centre, σ = 37.5 px: no model involved) and a
random map (uniform noise at the feature resolution, 2×2 here, upsampled; 3 seeds averaged). All maps
are read at dlib's last feature layer ``stage5`` (2×2×256), the only one its GAP → fc head reads.

Noise: a pair bootstrap (2,000 resamples of the 24 pairs, both sides of a pair kept together) of the
mean AUC difference to the best method; "tied with the best" = its 95 % interval contains 0.

Speed: SFAM on one pair as a ratio to the bare forward of the pair (both chips in one batch), process
CPU time with one torch thread, interleaved, median of repeats; Grad-CAM likewise.

    .venv/bin/python benchmarks/bench_faces.py            # full (a few minutes on 2 busy cores)
    .venv/bin/python benchmarks/bench_faces.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from featurelens.metrics import deletion_curve
from featurelens.metrics.baselines import centre_gaussian_maps, random_maps
from featurelens.metrics.scoring import similarity_score_fn
from featurelens.similarity.cis import EUCLIDEAN_RULES
from featurelens.similarity.embedding import Embedder, load_embedder
from featurelens.similarity.faces import box_in_chip, detect_faces, face_photo
from featurelens.similarity.pair import explain_pair

CLOCK = time.process_time
METHODS = [*(("sfam", r) for r in EUCLIDEAN_RULES), ("gradcam", None), ("gradcam++", None), ("stylianou", None),
           ("random", None), ("centre", None)]


def label(method: str, rule: str | None) -> str:
    return f"sfam[{rule}]" if method == "sfam" else method


def chips() -> tuple[list[str], list[Image.Image], list[np.ndarray]]:
    names, out, boxes = [], [], []
    for n in ("obama", "obama2", "obama3", "biden"):
        photo = Image.open(face_photo(n)).convert("RGB")
        for mirrored in (False, True):
            face = detect_faces(ImageOps.mirror(photo) if mirrored else photo)[0]
            names.append(n + ("_m" if mirrored else ""))
            out.append(face.chip)
            boxes.append(box_in_chip(face))
    return names, out, boxes


def pairs(names: list[str]) -> list[tuple[int, int, bool]]:
    out = []
    for i, j in itertools.combinations(range(len(names)), 2):
        pi, pj = names[i].split("_")[0], names[j].split("_")[0]
        if pi == pj:
            continue  # a photo and its own mirror
        same = pi.startswith("obama") == pj.startswith("obama")
        out.append((i, j, same))
    return out


def maps_for(emb: Embedder, xa: torch.Tensor, xb: torch.Tensor, method: str, rule: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    ex = explain_pair(emb, xa, xb, method, "euclidean", rule)
    return ex.maps_a, ex.maps_b


def tie_break(maps: torch.Tensor, seed: int = 123) -> torch.Tensor:
    """Maps plus 1e-6 × a seeded random map at the feature resolution (2×2, upsampled), so that ties
    (e.g. an all-zero map) are ordered like a draw of the random baseline rather than row by row from
    the top of the chip, for every method alike. (Pixel-level noise would not do: scattered deletion
    is a different, harsher perturbation than deleting regions.)"""
    return maps.detach().float() + 1e-6 * random_maps(maps.shape[0], tuple(maps.shape[-2:]), cells=2, seed=seed)


def auc(emb: Embedder, x: torch.Tensor, ref: torch.Tensor, maps: torch.Tensor, steps: int, mode: str) -> torch.Tensor:
    """Per image, the area under ``s = −‖e(x_t) − e^b‖`` over the fraction of pixels removed/inserted."""
    fn = similarity_score_fn(emb.model, ref, "euclidean")
    return deletion_curve(fn, x, tie_break(maps), steps=steps, mode=mode, baseline="blur", batch_size=64).auc


def box_energy(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    m = maps.clamp_min(0)
    return (m * boxes).sum((1, 2)) / m.sum((1, 2)).clamp_min(1e-12)


def bootstrap_tie(per_pair: dict[str, np.ndarray], best: str, lower_better: bool, n: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """95 % pair-bootstrap interval of ``mean(method) − mean(best)`` per method."""
    rng = np.random.default_rng(seed)
    npairs = len(per_pair[best])
    idx = rng.integers(0, npairs, size=(n, npairs))
    out = {}
    for k, v in per_pair.items():
        diff = v[idx].mean(1) - per_pair[best][idx].mean(1)
        out[k] = [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))]
    return out


def speed(emb: Embedder, xa: torch.Tensor, xb: torch.Tensor, repeats: int) -> dict:
    both = torch.cat([xa, xb])

    def bare() -> None:
        with torch.no_grad():
            emb.model(both)

    fns = {"forward": bare, "sfam": lambda: explain_pair(emb, xa, xb, "sfam", "euclidean"),
           "gradcam": lambda: explain_pair(emb, xa, xb, "gradcam", "euclidean")}
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = CLOCK()
            f()
            times[k].append(CLOCK() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"forward_ms": med["forward"] * 1e3, "sfam_ms": med["sfam"] * 1e3, "gradcam_ms": med["gradcam"] * 1e3,
            "sfam_ratio": med["sfam"] / med["forward"], "gradcam_ratio": med["gradcam"] / med["forward"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=None)
    ap.add_argument("--speed-only", action="store_true", help="only the SFAM / Grad-CAM cost ratios")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import os

    print(f"load average {os.getloadavg()[0]:.1f} (2 cores)", flush=True)
    emb = load_embedder("dlib_face")
    names, ims, boxes = chips()
    if args.speed_only:
        x = emb.prepare(ims)
        for k in (1, 4):
            sp = speed(emb, x[:k], x[4 : 4 + k], args.repeats)
            print(f"speed ({k} pair(s), 1 thread, CPU time, median of {args.repeats}): forward {sp['forward_ms']:.1f} ms, "
                  f"SFAM {sp['sfam_ms']:.1f} ms ({sp['sfam_ratio']:.3f}×), Grad-CAM {sp['gradcam_ms']:.1f} ms ({sp['gradcam_ratio']:.3f}×)")
        print(f"load average {os.getloadavg()[0]:.1f}")
        return
    pr = pairs(names)
    if args.quick:
        pr = [p for p in pr if p[2]][:3] + [p for p in pr if not p[2]][:3]
    steps = 5 if args.quick else args.steps
    x = emb.prepare(ims)
    with torch.no_grad():
        e = emb.embed(x)
    ia, ib = [p[0] for p in pr], [p[1] for p in pr]
    same = np.array([p[2] for p in pr])
    d = (e[ia] - e[ib]).norm(dim=1).numpy()
    agree = float(((d < 0.6) == same).mean())
    print(f"{len(pr)} pairs ({same.sum()} same-person, {(~same).sum()} different); "
          f"decisions at 0.6 agree with identity on {agree:.0%}; same d {d[same].mean():.3f}, different d {d[~same].mean():.3f}", flush=True)
    xa, xb = x[ia], x[ib]
    # both sides: explained image, its partner's embedding, its face box
    xs = torch.cat([xa, xb])
    refs = torch.cat([e[ib], e[ia]])
    bx = torch.from_numpy(np.stack([boxes[i] for i in ia] + [boxes[j] for j in ib])).float()
    rows: dict[str, dict] = {}
    per_pair: dict[str, dict[str, np.ndarray]] = {"deletion": {}, "insertion": {}}
    for method, rule in METHODS:
        t0 = time.perf_counter()
        name = label(method, rule)
        if method == "random":
            # 5 seeded random maps, each evaluated; per-image AUCs averaged over the seeds
            dels, ins, en = [], [], []
            for seed in range(3):
                m = random_maps(xs.shape[0], (150, 150), cells=2, seed=seed)
                dels.append(auc(emb, xs, refs, m, steps, "deletion"))
                ins.append(auc(emb, xs, refs, m, steps, "insertion"))
                en.append(box_energy(m, bx))
            dl, il, energy = torch.stack(dels).mean(0), torch.stack(ins).mean(0), torch.stack(en).mean(0)
            empty = 0
        else:
            if method == "centre":  # a fixed Gaussian on the chip centre (σ = 0.25 · 150): a prior, not an explanation
                m = centre_gaussian_maps(xs.shape[0], (150, 150))
            else:
                ma, mb = maps_for(emb, xa, xb, method, rule)
                m = torch.cat([ma, mb])
            dl = auc(emb, xs, refs, m, steps, "deletion")
            il = auc(emb, xs, refs, m, steps, "insertion")
            energy = box_energy(m, bx)
            empty = int((m.detach().flatten(1).amax(1) <= 0).sum())
        n = len(pr)
        dpp = ((dl[:n] + dl[n:]) / 2).numpy()  # per pair: mean over its two sides
        ipp = ((il[:n] + il[n:]) / 2).numpy()
        per_pair["deletion"][name], per_pair["insertion"][name] = dpp, ipp
        rows[name] = {"deletion": float(dpp.mean()), "insertion": float(ipp.mean()), "face_box_energy": float(energy.mean()),
                      "deletion_same": float(dpp[same].mean()), "deletion_diff": float(dpp[~same].mean()),
                      "insertion_same": float(ipp[same].mean()), "insertion_diff": float(ipp[~same].mean()),
                      "empty_maps": empty, "seconds": time.perf_counter() - t0}
        r = rows[name]
        print(f"  {name:24s} deletion {r['deletion']:.4f}  insertion {r['insertion']:.4f}  box {r['face_box_energy']:.3f}  "
              f"empty maps {empty}/{2 * n}  ({r['seconds']:.0f} s)", flush=True)
    best_del = min(per_pair["deletion"], key=lambda k: per_pair["deletion"][k].mean())
    best_ins = max(per_pair["insertion"], key=lambda k: per_pair["insertion"][k].mean())
    ci_del = bootstrap_tie(per_pair["deletion"], best_del, True)
    ci_ins = bootstrap_tie(per_pair["insertion"], best_ins, False)
    rand_d = per_pair["deletion"]["random"]
    sfam_rows = {k: r for k, r in rows.items() if k.startswith("sfam[") and r["empty_maps"] <= len(pr) // 10}
    chosen = None
    if sfam_rows:  # the default: among SFAM rules whose maps are not empty (≤ 10 %), the best mean rank on both curves
        order_d = sorted(sfam_rows, key=lambda k: rows[k]["deletion"])
        order_i = sorted(sfam_rows, key=lambda k: -rows[k]["insertion"])
        chosen = min(sfam_rows, key=lambda k: order_d.index(k) + order_i.index(k))
    for name, r in rows.items():
        r["deletion_tied_with_best"] = bool(ci_del[name][0] <= 0 <= ci_del[name][1]) or name == best_del
        r["insertion_tied_with_best"] = bool(ci_ins[name][0] <= 0 <= ci_ins[name][1]) or name == best_ins
        r["beats_random_deletion_fraction"] = float((per_pair["deletion"][name] < rand_d).mean())
        r["deletion_ci_vs_best"], r["insertion_ci_vs_best"] = ci_del[name], ci_ins[name]
    print(f"\nbest deletion: {best_del}; best insertion: {best_ins}; chosen SFAM default (non-empty maps): {chosen}")
    print("\n| method | deletion AUC ↓ | insertion AUC ↑ | face-box energy | beats random (deletion) | tied with best (del / ins) | empty maps |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['deletion']:.3f} | {r['insertion']:.3f} | {r['face_box_energy']:.3f} | "
              f"{r['beats_random_deletion_fraction']:.0%} | {'yes' if r['deletion_tied_with_best'] else 'no'} / "
              f"{'yes' if r['insertion_tied_with_best'] else 'no'} | {r['empty_maps']}/{2 * len(pr)} |")
    print(f"\n{len(pr)} pairs ({same.sum()} same-person, {(~same).sum()} different), {2 * len(pr)} explained chips, "
          f"{steps} steps, blur baseline")
    sp = speed(emb, x[:1], x[2:3], 5 if args.quick else args.repeats)
    print(f"speed (one pair, 1 thread, CPU time): forward {sp['forward_ms']:.1f} ms, SFAM {sp['sfam_ms']:.1f} ms "
          f"({sp['sfam_ratio']:.3f}×), Grad-CAM {sp['gradcam_ms']:.1f} ms ({sp['gradcam_ratio']:.2f}×)")
    print(f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"pairs": len(pr), "same": int(same.sum()), "distances": d.tolist(),
                                               "decision_agreement": agree, "methods": rows, "speed": sp, "chosen": chosen}, indent=1))


if __name__ == "__main__":
    main()
