"""Benchmark of the layer-wise network explanation (issue 5) on EfficientNet-Lite0 and offline photos.

Per image, one forward/backward captures the default layers (the later half of the conv layers, 25);
then, for every (image, layer), the kept channels are clustered by:

* ``paper``    – the published pipeline: PCA(50) → scikit-learn ``TSNE(init="pca")`` (Barnes–Hut) → Ward;
* ``faithful`` – our exact t-SNE in torch with scikit-learn's schedule (float32) → Ward;
* ``fast``     – Laplacian eigenmap of the same t-SNE affinities → Ward (no t-SNE descent);
* ``pca``      – naive PCA → Ward (the issue's 0.38 reference);
* ``faithful64`` – the faithful mode in float64: how much the faithful clustering moves under a pure
  change of floating-point precision (``bench_network_stability.py`` measures this noise level and an
  oracle ceiling for any other method in detail).

All clustering runs single-threaded and sequentially, so times are comparable within the run; every
time is reported as a RATIO to the paper pipeline measured in the same run. The adjusted Rand index
(ARI) is against the faithful mode. Silhouettes: on each method's own embedding, and on the common
PCA space (method-independent). Finally the bundles for all images × default layers are written in
faithful and fast mode and their time per image is reported; the per-cluster deletion effect (one
forward pass per cluster) is timed separately.

    python benchmarks/bench_network.py            # 8 images x 25 layers
    python benchmarks/bench_network.py --compare-images 2 --effect-images 2   # lighter comparison
    python benchmarks/bench_network.py --quick    # 2 images x 4 layers
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "camera.png"]


def photo_paths(n: int) -> list[Path]:
    import skimage

    root = Path(skimage.__file__).parent / "data"
    return [root / name for name in PHOTOS[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 images x 4 layers")
    ap.add_argument("--images", type=int, default=8, help="images in the bundles")
    ap.add_argument("--compare-images", type=int, default=8, help="images in the method comparison (<= --images)")
    ap.add_argument("--effect-images", type=int, default=8,
                    help="images whose bundle includes the per-cluster deletion effect (timed separately)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--keep", default=None, help="keep the faithful bundle in this folder")
    args = ap.parse_args()

    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    from featurelens.engine import Capture
    from featurelens.imaging import load_image
    from featurelens.models import load_model
    from featurelens.network import clustering as C
    from featurelens.network.build import build_bundle
    from featurelens.network.layers import select_layers
    from featurelens.network.pipeline import NetworkParams, embed
    from featurelens.network.tsne import tsne
    from featurelens.targets import Predicted

    n_images = 2 if args.quick else args.images
    spec = load_model()
    layers = select_layers(spec.model, spec.sample_input())
    if args.quick:
        layers = layers[-4:]
    all_paths = photo_paths(n_images)
    paths = all_paths[: min(args.compare_images, n_images)]
    pils = [load_image(p) for p in paths]
    x = spec.prepare(pils)
    print(f"{len(paths)} images x {len(layers)} layers ({layers[0]} … {layers[-1]})")

    with Capture(spec.model, layers) as cap:
        t0 = time.perf_counter()
        out = cap.forward(x)
        grads = cap.gradients(Predicted()(out))
        t_capture = time.perf_counter() - t0
        acts = {n: cap.activations[n][-1].detach() for n in layers}

    methods = ["paper", "faithful", "fast", "pca", "faithful64"]
    times = {m: 0.0 for m in methods}
    ari: dict[str, list[float]] = {m: [] for m in methods if m != "faithful"}
    sil_own: dict[str, list[float]] = {m: [] for m in methods}
    sil_pca: dict[str, list[float]] = {m: [] for m in methods}
    ks: dict[str, list[int]] = {m: [] for m in methods}
    kept_sizes = []
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        for b in range(len(paths)):
            for name in layers:
                w = C.channel_weights(acts[name][b], grads[name][-1][b])
                kept = C.prune_channels(w)
                feats = C.minmax_rows(acts[name][b][kept].float().flatten(1))
                kept_sizes.append(int(kept.numel()))
                if kept.numel() < 5:
                    continue
                reduced = C.pca(feats, 50)
                labels = {}
                for m in methods:
                    t = time.perf_counter()
                    if m == "faithful64":
                        pts = C.pca(feats, 50)
                        pts = tsne(pts, dtype=torch.float64)
                    else:
                        mode = "sklearn" if m == "paper" else m
                        pts = embed(feats, NetworkParams(mode=mode))
                    cl = C.best_ward(pts, 3, 8)
                    times[m] += time.perf_counter() - t
                    labels[m] = cl.labels
                    ks[m].append(cl.k)
                    sil_own[m].append(float(cl.silhouette or 0.0))
                    sil_pca[m].append(C.silhouette(reduced, torch.from_numpy(cl.labels)))
                for m in ari:
                    ari[m].append(float(adjusted_rand_score(labels["faithful"], labels[m])))
            print(f"  image {b + 1}/{len(paths)} done; cumulative seconds "
                  + ", ".join(f"{m} {times[m]:.1f}" for m in methods), flush=True)
    torch.set_num_threads(torch_threads)

    n = len(paths)
    base = times["paper"]
    print(f"\nkept channels per layer: median {np.median(kept_sizes):.0f}, range {min(kept_sizes)}–{max(kept_sizes)}; "
          f"capture (1 fwd+bwd, {n} images, {len(layers)} layers): {t_capture:.2f} s")
    print(f"\n{'method':<11} {'s/image':>8} {'speed-up vs paper':>18} {'median ARI vs faithful':>23} "
          f"{'mean ARI':>9} {'silhouette (own)':>17} {'silhouette (PCA)':>17} {'median k':>9}")
    summary = {}
    for m in methods:
        a = ari.get(m)
        row = {
            "seconds_per_image": times[m] / n,
            "speedup_vs_paper": base / times[m] if times[m] else None,
            "median_ari_vs_faithful": float(np.median(a)) if a else 1.0,
            "mean_ari_vs_faithful": float(np.mean(a)) if a else 1.0,
            "silhouette_own": float(np.mean(sil_own[m])),
            "silhouette_pca": float(np.mean(sil_pca[m])),
            "median_k": float(np.median(ks[m])),
        }
        summary[m] = row
        print(f"{m:<11} {row['seconds_per_image']:8.2f} {row['speedup_vs_paper']:17.1f}x "
              f"{row['median_ari_vs_faithful']:23.2f} {row['mean_ari_vs_faithful']:9.2f} "
              f"{row['silhouette_own']:17.3f} {row['silhouette_pca']:17.3f} {row['median_k']:9.1f}")

    # whole bundles (layers in parallel threads): clustering + maps + writing, then the deletion effect
    bundles: dict[str, dict[str, float]] = {}
    n_all = len(all_paths)
    tmp = Path(tempfile.mkdtemp(prefix="bench_network_"))
    try:
        for mode in ("faithful", "fast"):
            t = time.perf_counter()
            bundle = build_bundle(spec, all_paths, tmp / mode, layers=layers,
                                  params=NetworkParams(mode=mode, effect=False), batch_size=4)
            dt = time.perf_counter() - t
            bundles[mode] = {"seconds_per_image": dt / n_all, "clusters": sum(len(im.clusters) for im in bundle.images)}
            print(f"bundle ({mode}): {n_all} images x {len(layers)} layers, {bundles[mode]['clusters']} clusters, "
                  f"{dt / n_all:.2f} s/image (no effect)", flush=True)
        n_eff = min(args.effect_images, n_all)
        t = time.perf_counter()
        bundle = build_bundle(spec, all_paths[:n_eff], tmp / "effect", layers=layers,
                              params=NetworkParams(mode="fast", effect=True), batch_size=4)
        dt = time.perf_counter() - t
        n_cl = sum(len(im.clusters) for im in bundle.images)
        effect_per_image = max(dt / n_eff - bundles["fast"]["seconds_per_image"], 0.0)
        bundles["effect"] = {"seconds_per_image": effect_per_image, "clusters_per_image": n_cl / n_eff}
        print(f"deletion effect: ~{effect_per_image:.2f} s/image extra for {n_cl / n_eff:.0f} clusters/image "
              f"(one forward per cluster, batched)")
        if args.keep:
            shutil.copytree(tmp / "effect", args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bf, bq = bundles["faithful"]["seconds_per_image"], bundles["fast"]["seconds_per_image"]
    print(f"bundle time ratio fast/faithful: {bq / bf:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": n, "layers": len(layers), "clustering": summary,
                                               "bundles": bundles}, indent=1))


if __name__ == "__main__":
    main()
