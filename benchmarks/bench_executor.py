"""Images per second of :mod:`featurelens.network.executor`: in-process vs Ray with 1 and 2 workers.

The per-image work stands for the network pipeline: load a real photo (scikit-image's, plus clearly
marked augmented crops of them to reach ``--images``), EfficientNet-Lite0 forward and backward with
activations and gradients captured at two layers, then, for each layer, a clustering-sized job: the
Grad-CAM-weighted channel vectors of the kept channels → cosine distances → Ward linkage (scipy) →
``--clusters`` clusters → one feature-resolution map per cluster. The model is loaded once per worker
(the factory). Ray's start-up is timed apart; a run's time includes starting its actors and their
model loads, as a user sees it, and a "steady" rate is also printed: images after the first delivered
batch over the time from that batch to the last.

Every worker, and the in-process baseline, uses one torch thread, so 2 workers on 2 cores can at
best double the 1-worker rate. Printed: images/s for each setting and the ratios measured in the same
run, 2 workers / 1 worker (target ≥ 1.6× on 2 cores) and 2 workers / in-process, with ``uptime``
before and after (the machine is shared; timings are noisy).

    python benchmarks/bench_executor.py               # 24 images, batch 4
    python benchmarks/bench_executor.py --images 8 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "camera.png"]
LAYERS = ["blocks.12", "head"]


def make_images(folder: Path, n: int) -> list[tuple[str, Path]]:
    """The real photos first, then AUGMENTED views (random crops + flips of them), marked ``aug-`` in their id."""
    import skimage
    from PIL import ImageOps

    from featurelens.imaging import load_image

    root = Path(skimage.__file__).parent / "data"
    photos = [(Path(p).stem, load_image(root / p)) for p in PHOTOS]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        name, im = photos[i % len(photos)]
        if i < len(photos):
            image_id, view = name, im
        else:
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            view = im.crop((x, y, x + cw, y + ch))
            if rng.random() < 0.5:
                view = ImageOps.mirror(view)
            image_id = f"aug-{i:03d}-crop-of-{name}"
        p = folder / f"{image_id}.jpg"
        view.save(p, quality=92)
        out.append((image_id, p))
    return out


def load_worker():
    """The factory: one torch thread, the model loaded once."""
    import torch

    torch.set_num_threads(1)
    from featurelens.models import load_model

    return load_model("efficientnet_lite0")


def explain_batch(spec, batch, n_clusters: int = 8, keep: int = 256) -> list[dict]:
    """Per image: capture → per layer, Ward clustering of the top-``keep`` channels → cluster maps."""
    import torch
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    from featurelens.engine import capture
    from featurelens.imaging import load_image

    pils = [load_image(p) for p in batch.payloads]
    x = spec.prepare(pils)
    cap = capture(spec.model, x, LAYERS)
    out = []
    for b, image_id in enumerate(batch.ids):
        res = {"id": image_id, "layers": {}}
        for name in LAYERS:
            a = cap.activations[name][0][b]                  # [C, h, w]
            g = cap.gradients[name][0][b]
            w = g.mean(dim=(1, 2))
            contrib = (w[:, None, None] * a).flatten(1)       # [C, h*w]
            top = torch.argsort(contrib.abs().sum(1), descending=True)[:keep]
            vecs = contrib[top].double().numpy()
            z = linkage(pdist(vecs + 1e-9, "cosine"), "ward")
            labels = fcluster(z, n_clusters, "maxclust")
            maps = np.stack([np.maximum(contrib[top[labels == k]].sum(0).reshape(a.shape[1:]).numpy(), 0)
                             for k in range(1, labels.max() + 1)])
            res["layers"][name] = {"labels": labels, "maps": maps.astype(np.float32)}
        out.append(res)
    return out


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="in-process and 2 Ray workers only")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local benchmark instance
    import ray

    from featurelens.network.executor import InProcessExecutor, RayExecutor

    load_before = uptime()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        items = make_images(Path(tmp), args.images)
        n_aug = sum(i.startswith("aug-") for i, _ in items)
        print(f"{len(items)} images ({len(items) - n_aug} real photos, {n_aug} augmented crops), "
              f"batch {args.batch_size}, layers {LAYERS}")
        print(f"load before: {load_before}")

        def sink(got: dict, times: list):
            def f(batch, res):
                times.append((time.perf_counter(), len(batch)))
                got.update({x["id"]: x for x in res})
            return f

        def record(name: str, stats, times: list) -> None:
            steady = (sum(n for _, n in times[1:]) / (times[-1][0] - times[0][0])
                      if len(times) > 1 and times[-1][0] > times[0][0] else float("nan"))
            results[name] = {"images_per_s": stats.images_per_second, "steady_images_per_s": steady,
                             "seconds": stats.seconds, "retries": stats.retries}
            print(f"  {name:<12} {stats.images} images in {stats.seconds:6.1f} s = "
                  f"{stats.images_per_second:5.2f} images/s overall, {steady:5.2f} images/s steady")

        ref: dict = {}
        t0 = time.perf_counter()
        state = load_worker()
        print(f"model load (in-process): {time.perf_counter() - t0:.1f} s")
        times: list = []
        stats = InProcessExecutor().run(items, lambda: state, explain_batch, sink(ref, times),
                                        batch_size=args.batch_size)
        record("in-process", stats, times)

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"ray start: {time.perf_counter() - t0:.1f} s")
        try:
            for workers in ([2] if args.quick else [1, 2]):
                got, times = {}, []
                ex = RayExecutor(workers=workers)
                # the run includes starting the actors and their model loads (as for a user)
                stats = ex.run(items, load_worker, explain_batch, sink(got, times), batch_size=args.batch_size)
                record(f"ray x{workers}", stats, times)
                same = all(np.array_equal(got[k]["layers"][n]["labels"], ref[k]["layers"][n]["labels"])
                           for k in ref for n in LAYERS)
                print(f"    cluster labels identical to in-process: {same}")
        finally:
            ray.shutdown()
    load_after = uptime()
    print(f"load after: {load_after}")
    for kind, key in (("overall", "images_per_s"), ("steady", "steady_images_per_s")):
        if "ray x1" in results:
            r = results["ray x2"][key] / results["ray x1"][key]
            print(f"speed-up ray x2 / ray x1 ({kind}): {r:.2f}x (target >= 1.6x on 2 cores)")
            results[f"speedup_2_over_1_{kind}"] = r
        r2 = results["ray x2"][key] / results["in-process"][key]
        print(f"speed-up ray x2 / in-process ({kind}): {r2:.2f}x")
        results[f"speedup_2_over_inprocess_{kind}"] = r2
    results["load"] = {"before": load_before, "after": load_after}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
