"""Network explanations of a dataset on the real pipeline: in-process vs Ray with 1 and 2 workers.

EfficientNet-Lite0, its default layers, the stable mode with deletion effects (what the issue's cost
target is about), real photos from scikit-image written as a folder of files. The same dataset runs
three times through ``build_dataset_bundle`` (the code path of ``featurelens network``): in-process
(torch's default threads), on a local Ray instance with 1 worker and with 2 workers (1 torch thread
each). Printed and written to ``docs/results/bench_dataset.json``: wall seconds (including starting Ray
and loading the model in each worker), images per second, CPU seconds per image (summed over the
worker processes, from the per-image costs the workers record), the 2-worker speed-up over 1 worker
(target >= 1.6x on 2 cores), bytes and files per image of the v3 bundle (target <= 300 KB and <= 3 files),
and ``uptime`` before and after (the machine is shared: read the figures against the load).

    python benchmarks/bench_dataset.py               # 8 photos
    python benchmarks/bench_dataset.py --images 4    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "camera.png"]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def folder_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".featurelens.lock")]
    return sum(p.stat().st_size for p in files), len(files)


def write_views(photo: Path, folder: Path, n: int) -> None:
    """``n`` augmented views of ``photo`` into ``folder``, marked in their names: a horizontal flip, then
    crops of 80% of each side at the corners and the centre (cycled)."""
    from PIL import Image, ImageOps

    with Image.open(photo) as im:
        im = im.convert("RGB")
        w, h = im.size
        cw, ch = int(w * 0.8), int(h * 0.8)
        corners = [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch), ((w - cw) // 2, (h - ch) // 2)]
        for i in range(n):
            if i == 0:
                view, tag = ImageOps.mirror(im), "aug-flip"
            else:
                x, y = corners[(i - 1) % len(corners)]
                view, tag = im.crop((x, y, x + cw, y + ch)), f"aug-crop{i}"
            view.save(folder / f"{photo.stem}_{tag}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="real photos (at most 8)")
    ap.add_argument("--views", type=int, default=1,
                    help="images per photo: the photo, then clearly marked augmented views of it "
                    "(<name>_aug-flip, <name>_aug-crop<i>: a horizontal flip, then 80%% crops)")
    ap.add_argument("--shard-size", type=int, default=2, help="images per shard = per Ray task")
    ap.add_argument("--runs", default="inprocess,ray1,ray2")
    ap.add_argument("--json", default="docs/results/bench_dataset.json")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance for this benchmark only

    import shutil

    import numpy as np
    import skimage
    import torch

    from featurelens.models import load_model
    from featurelens.network.build import LoadModel, build_dataset_bundle
    from featurelens.network.bundle import load_bundle
    from featurelens.network.datasets import read_dataset, select
    from featurelens.network.executor import InProcessExecutor, RayExecutor
    from featurelens.network.layers import resolve_units
    from featurelens.network.pipeline import NetworkParams
    from featurelens.network.shards import ShardStore

    root = Path(skimage.__file__).parent / "data"
    spec = load_model("efficientnet_lite0")
    units = resolve_units(spec.model, spec.sample_input(), None)
    fig: dict = {"images": args.images * args.views, "real_photos": args.images, "views_per_photo": args.views,
                 "layers": len(units), "mode": "stable", "effects": True,
                 "shard_size": args.shard_size, "cpus": os.cpu_count(), "uptime_before": uptime(), "runs": {}}
    print(f"{args.images} real photos x {args.views} view(s) (augmented views marked _aug-), {len(units)} default "
          f"layers, stable mode with effects; {fig['uptime_before']}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "photos"
        data.mkdir()
        for name in PHOTOS[: args.images]:
            shutil.copy(root / name, data / name)
            write_views(root / name, data, args.views - 1)
        dataset = select(read_dataset([data]))
        contents = {}
        for run in args.runs.split(","):
            workers = {"inprocess": 1, "ray1": 1, "ray2": 2}[run]
            params = NetworkParams(mode="stable", effect=True, workers=2 if run == "inprocess" else 1)
            if run == "inprocess":
                executor, factory = InProcessExecutor(), None
            else:
                executor = RayExecutor(workers, cpus_per_worker=1.0, init_kwargs={"log_to_driver": False})
                factory = LoadModel(spec.name, tuple(u.name for u in units), threads=1)
            out = tmp / run
            c0 = time.process_time()
            t0 = time.perf_counter()
            build_dataset_bundle(spec, dataset, out, layers=units, params=params, executor=executor,
                                 factory=factory, shard_size=args.shard_size)
            wall = time.perf_counter() - t0
            driver_cpu = time.process_time() - c0
            store = ShardStore(out / "shards")
            costs = [e["meta"]["cost"] for k in store.keys() for e in store.index(k)["images"]]
            n = len(costs)
            nbytes, nfiles = folder_size(out)
            worker_cpu = sum(c["cpu_seconds"] for c in costs)
            fig["runs"][run] = {
                "workers": workers, "wall_s": round(wall, 2), "images_per_s": round(n / wall, 4),
                "cpu_s_per_image": round((driver_cpu if run == "inprocess" else worker_cpu) / n, 3),
                "work_s_per_image": round(sum(c["seconds"] for c in costs) / n, 3),
                "processes": len({c["pid"] for c in costs}),
                "bytes_per_image": round(nbytes / n), "files_per_image": round(nfiles / n, 3),
                "manifest_bytes_per_image": round((out / "bundle.json").stat().st_size / n),
                "json_bytes_per_image": round(sum(q.stat().st_size for q in out.rglob("*.json")) / n),
            }
            r = fig["runs"][run]
            print(f"{run:9s}: {r['wall_s']:7.1f} s wall, {r['images_per_s']:.3f} images/s, "
                  f"{r['cpu_s_per_image']:.2f} CPU s/image, {r['work_s_per_image']:.2f} s/image in the workers "
                  f"({r['processes']} process(es)); {r['bytes_per_image'] / 1e3:.0f} KB and "
                  f"{r['files_per_image']:.2f} files per image ({r['manifest_bytes_per_image'] / 1e3:.0f} KB of bundle.json, "
                  f"{r['json_bytes_per_image'] / 1e3:.0f} KB of JSON in all)")
            b = load_bundle(out)
            contents[run] = {im.id: [(c.channels, c.weight, c.effect, b.load_map(c)) for c in im.clusters]
                             for im in b.images}
            torch.set_num_threads(os.cpu_count() or 1)
        runs = fig["runs"]
        if "ray1" in runs and "ray2" in runs:
            fig["speedup_ray2_over_ray1"] = round(runs["ray2"]["images_per_s"] / runs["ray1"]["images_per_s"], 3)
            print(f"2-worker speed-up over 1 worker: {fig['speedup_ray2_over_ray1']:.2f}x (target >= 1.6x)")
        if "inprocess" in runs and "ray2" in runs:
            fig["speedup_ray2_over_inprocess"] = round(runs["ray2"]["images_per_s"] / runs["inprocess"]["images_per_s"], 3)
            print(f"Ray 2 workers over in-process: {fig['speedup_ray2_over_inprocess']:.2f}x")
        base = next(iter(contents))
        fig["agreement_with_" + base] = {}
        for run, c in contents.items():
            differ, max_w, max_e, max_m = [], 0.0, 0.0, 0.0
            for iid, cl in c.items():
                ref = contents[base][iid]
                if [x[0] for x in cl] != [x[0] for x in ref]:
                    differ.append(iid)
                    continue
                for x, y in zip(cl, ref):
                    max_w = max(max_w, abs(x[1] - y[1]))
                    max_e = max(max_e, abs((x[2] or 0.0) - (y[2] or 0.0)))
                    max_m = max(max_m, float(np.abs(x[3] - y[3]).max()))
            fig["agreement_with_" + base][run] = {"images_with_other_clusters": differ, "max_weight_diff": max_w,
                                                  "max_effect_diff": max_e, "max_map_diff": max_m}
            print(f"{run} vs {base}: images whose clusters differ {differ or 'none'}; otherwise max |diff| "
                  f"weight {max_w:.1e}, effect {max_e:.1e}, map {max_m:.1e}")
        same = all(not v["images_with_other_clusters"] and v["max_weight_diff"] < 1e-3 and v["max_effect_diff"] < 1e-3
                   and v["max_map_diff"] < 2e-3 for v in fig["agreement_with_" + base].values())
        fig["same_content"] = bool(same)
        print(f"same clusters, weights, effects and maps in every run: {same}")
    fig["uptime_after"] = uptime()
    print(fig["uptime_after"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()
