"""Benchmark of the network explanation (issue 11) on EfficientNet-Lite0 and offline photos.

Per image, one forward/backward captures the default layers (the later half of the post-activation
units, 17). Then, for every (image, layer), each mode clusters the kept channels twice: on the clean
activations and on ``A ⊙ (1 + 1e-6·Z)`` (``NetworkParams.stability_eps``, seeded noise). It reports,
as medians over (image, layer):

1. the self-agreement of each mode under that noise: adjusted Rand index (ARI) of the two
   partitions, and map agreement (:func:`featurelens.network.clustering.map_agreement`: weighted
   best-match Pearson correlation of the cluster maps, the clean run as reference);
2. the agreement of each mode's clean cluster maps with the paper mode's clean maps (paper as the
   reference), to compare with the paper mode's own self-agreement;
3. clustering seconds per image of each mode, and the speed-up against the paper mode.

Then it writes whole bundles end to end (8 photos, effects on) in the stable and the paper mode and
reports seconds per image by stage: start-up (a fresh interpreter importing featurelens and loading
the model), capture (forward + backward), clustering, effects (per-cluster deletion), writing. Every
time is also given as a ratio to the paper mode measured in the same run. Timings on a shared 2-core
machine are noisy: the load average is printed with them.

    python benchmarks/bench_network.py                     # 8 images x 17 layers, paper/stable/pca
    python benchmarks/bench_network.py --modes paper,stable,faithful,pca
    python benchmarks/bench_network.py --quick             # 2 images x 4 layers
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "camera.png"]
STAGES = ("startup", "capture", "clustering", "effects", "writing")


def photo_paths(n: int) -> list[Path]:
    import skimage

    root = Path(skimage.__file__).parent / "data"
    return [root / name for name in PHOTOS[:n]]


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def startup_seconds() -> float:
    """Wall time of a fresh interpreter that imports the network pipeline and loads the default model."""
    code = ("import featurelens.cli.network, featurelens.network.build\n"
            "from featurelens.models import load_model\nload_model()\n")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
    return time.perf_counter() - t


def cli_seconds(mode: str, paths: list[Path], out: Path) -> float:
    """Wall time of ``featurelens network PHOTOS --mode MODE`` in a fresh interpreter: what a user runs.

    It writes what the command writes today (the version-3 sharded bundle and its viewer), effects on,
    with the command's defaults (``--workers 2``), start-up and model loading included.
    """
    cmd = [sys.executable, "-c", "import sys; from featurelens.cli.main import main; sys.exit(main())",
           "network", *map(str, paths), "--mode", mode, "--out", str(out), "--quiet"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 images x 4 layers")
    ap.add_argument("--images", type=int, default=8, help="photos (at most 8)")
    ap.add_argument("--modes", default="paper,stable,pca", help="modes compared (paper first: the reference)")
    ap.add_argument("--no-bundles", action="store_true", help="skip the end-to-end bundle runs")
    ap.add_argument("--cli-repeats", type=int, default=2,
                    help="repeats of the end-to-end `featurelens network` runs per mode, interleaved (0: skip)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    from featurelens.engine import Capture
    from featurelens.imaging import load_image
    from featurelens.models import load_model
    from featurelens.network import clustering as C
    from featurelens.network.build import build_bundle
    from featurelens.network.layers import resolve_units
    from featurelens.network.pipeline import (
        NetworkParams,
        embed,
        kept_cluster_maps,
        map_source,
        perturbed_labels,
    )
    from featurelens.targets import Predicted

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if modes[0] != "paper":
        raise SystemExit("--modes must start with paper (the reference)")
    n_images = 2 if args.quick else min(args.images, len(PHOTOS))
    spec = load_model()
    units = resolve_units(spec.model, spec.sample_input())
    if args.quick:
        units = units[-4:]
    paths = photo_paths(n_images)
    x = spec.prepare([load_image(p) for p in paths])
    print(f"{len(paths)} images x {len(units)} layers ({units[0].name} … {units[-1].name}); load {load_average()}")

    with Capture(spec.model, list(dict.fromkeys(u.module for u in units))) as cap:
        out = cap.forward(x)
        grads = cap.gradients(Predicted()(out))
        acts = {u.name: cap.activations[u.module][u.call].detach() for u in units}
        grad = {u.name: grads[u.module][u.call] for u in units}

    params = {m: NetworkParams(mode=m, effect=False, stability_runs=1) for m in modes}
    seconds = {m: 0.0 for m in modes}
    self_ari: dict[str, list[float]] = {m: [] for m in modes}
    self_map: dict[str, list[float]] = {m: [] for m in modes}
    vs_paper: dict[str, list[float]] = {m: [] for m in modes if m != "paper"}
    kept_sizes: list[int] = []
    negative = 0
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        for b in range(len(paths)):
            for u in units:
                a, g = acts[u.name][b], grad[u.name][b]
                negative += int(u.activation is not None and float(a.min()) < 0)
                w = C.channel_weights(a, g)
                kept = C.prune_channels(w)  # the authors' rule, the default
                kept_sizes.append(int(kept.numel()))
                if kept.numel() < 5:
                    continue
                feats = C.minmax_rows(a[kept].float().flatten(1))
                h, wd = a.shape[1:]
                kw = w[kept]
                clean_maps = {}
                for m in modes:
                    p = params[m]
                    source = map_source(a[kept].float(), feats.view(-1, h, wd), p)
                    t = time.perf_counter()
                    labels = C.best_ward(embed(feats, p), p.k_min, p.k_max).labels
                    found = kept_cluster_maps(source, kw, labels, p)
                    seconds[m] += time.perf_counter() - t
                    ref = torch.stack([f for _, _, f in found])
                    ref_w = torch.tensor([wc for _, wc, _ in found], dtype=torch.float64)
                    clean_maps[m] = (ref, ref_w)
                    relabel = perturbed_labels(feats, p)[0]
                    other = torch.stack([f for _, _, f in kept_cluster_maps(source, kw, relabel, p)])
                    self_ari[m].append(float(adjusted_rand_score(labels, relabel)))
                    self_map[m].append(C.map_agreement(ref, ref_w, other))
                for m in vs_paper:
                    vs_paper[m].append(C.map_agreement(*clean_maps["paper"], clean_maps[m][0]))
            print(f"  image {b + 1}/{len(paths)}; clustering seconds so far "
                  + ", ".join(f"{m} {seconds[m]:.1f}" for m in modes) + f"; load {load_average()}", flush=True)
    torch.set_num_threads(torch_threads)

    n = len(paths)
    print(f"\nkept channels per layer (d(K) pruning): median {np.median(kept_sizes):.0f}, "
          f"range {min(kept_sizes)}–{max(kept_sizes)}; activated layers with a negative value: {negative}")
    print(f"\n{'mode':<9} {'self ARI':>9} {'self map agr.':>14} {'map agr. vs paper':>18} "
          f"{'clustering s/image':>19} {'speed-up vs paper':>18}")
    summary: dict[str, dict[str, float | None]] = {}
    for m in modes:
        row = {
            "median_self_ari": float(np.median(self_ari[m])),
            "median_self_map_agreement": float(np.nanmedian(self_map[m])),
            "median_map_agreement_vs_paper": float(np.nanmedian(vs_paper[m])) if m in vs_paper else None,
            "clustering_seconds_per_image": seconds[m] / n,
            "clustering_speedup_vs_paper": seconds["paper"] / seconds[m] if seconds[m] else None,
        }
        summary[m] = row
        vp = "(reference)" if row["median_map_agreement_vs_paper"] is None else f"{row['median_map_agreement_vs_paper']:.3f}"
        print(f"{m:<9} {row['median_self_ari']:9.3f} {row['median_self_map_agreement']:14.3f} {vp:>18} "
              f"{row['clustering_seconds_per_image']:19.2f} {row['clustering_speedup_vs_paper']:17.1f}x")

    result: dict[str, object] = {"images": n, "layers": [u.name for u in units], "agreement": summary}
    if "stable" in summary:
        st, pp = summary["stable"], summary["paper"]
        checks = {
            "1_stable_self_ari_ge_0.95": st["median_self_ari"] >= 0.95,
            "1_stable_self_map_agreement_ge_0.95": st["median_self_map_agreement"] >= 0.95,
            "2_stable_vs_paper_ge_paper_vs_paper": st["median_map_agreement_vs_paper"] >= pp["median_self_map_agreement"],
        }
        result["checks"] = checks

    if not args.no_bundles:
        tmp = Path(tempfile.mkdtemp(prefix="bench_network_"))
        stages: dict[str, dict[str, float]] = {}
        try:
            start = startup_seconds()
            for m in ("stable", "paper"):
                timings: dict[str, float] = {}
                t = time.perf_counter()
                bundle = build_bundle(spec, paths, tmp / m, layers=units, params=NetworkParams(mode=m, effect=True),
                                      batch_size=8, timings=timings)
                total = time.perf_counter() - t
                per = {"startup": start / n, **{k: timings.get(k, 0.0) / n for k in STAGES[1:]}}
                per["total"] = start / n + total / n
                per.update({f"{k}_cpu": timings.get(f"{k}_cpu", 0.0) / n for k in STAGES[1:]})
                stages[m] = per
                n_cl = sum(len(im.clusters) for im in bundle.images)
                print(f"\nbundle ({m}, effects on): {n} images x {len(units)} layers, {n_cl} clusters "
                      f"({n_cl / n:.0f}/image); load {load_average()}")
                print("  s/image (wall): " + ", ".join(f"{k} {per[k]:.2f}" for k in (*STAGES, "total")))
                print("  CPU s/image (all threads): " + ", ".join(f"{k} {per[k + '_cpu']:.2f}" for k in STAGES[1:]),
                      flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        speedup = stages["paper"]["total"] / stages["stable"]["total"]
        print(f"\nend to end: stable {stages['stable']['total']:.2f} s/image, paper {stages['paper']['total']:.2f} "
              f"s/image, speed-up {speedup:.1f}x (ratio stable/paper {1 / speedup:.3f})")
        result["bundles"] = stages
        result["end_to_end_speedup_stable_vs_paper"] = speedup
        if "checks" in result:
            result["checks"]["3_stable_5x_faster_end_to_end"] = speedup >= 5.0  # type: ignore[index]
            result["checks"]["4_stable_le_4s_per_image"] = stages["stable"]["total"] <= 4.0  # type: ignore[index]
    if args.cli_repeats > 0:
        tmp = Path(tempfile.mkdtemp(prefix="bench_network_cli_"))
        runs: dict[str, list[float]] = {"stable": [], "paper": []}
        try:
            for r in range(args.cli_repeats):
                order = ("stable", "paper") if r % 2 == 0 else ("paper", "stable")
                for m in order:
                    runs[m].append(cli_seconds(m, paths, tmp / f"{m}{r}") / n)
                    shutil.rmtree(tmp / f"{m}{r}", ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        med = {m: float(np.median(v)) for m, v in runs.items()}
        cli_speedup = med["paper"] / med["stable"]
        print(f"\n`featurelens network` end to end ({n} photos, {args.cli_repeats} interleaved runs per mode, "
              f"median): stable {med['stable']:.2f} s/image, paper {med['paper']:.2f} s/image, speed-up "
              f"{cli_speedup:.1f}x; load {load_average()}")
        result["cli"] = {"seconds_per_image": runs, "median_seconds_per_image": med,
                         "speedup_stable_vs_paper": cli_speedup}
        if "checks" in result:
            result["checks"]["3_stable_5x_faster_end_to_end_cli"] = cli_speedup >= 5.0  # type: ignore[index]
    if "checks" in result:
        print("\ntargets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["checks"].items()))  # type: ignore[union-attr]
    result["load_average"] = load_average()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
