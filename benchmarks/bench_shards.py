"""Bytes and files per image: today's bundle layout vs shards (:mod:`featurelens.network.shards`).

The network pipeline (``explain_network``, fast mode, default layers of EfficientNet-Lite0) runs on
real photos from scikit-image. Its results are written twice: as today's bundle (``build_bundle``: a
``.npy``, a map PNG and an overlay PNG per cluster) and as shards (per image: every cluster map at
feature resolution as float16, the display image once as a JPEG, cluster metadata in the index; one
``.npz`` + one ``.json`` per ``--shard-size`` images). Printed: bytes and files per image of each, the
ratio measured in the same run (issue target: ≥ 30× smaller, ≤ 300 KB and ≤ 3 files per image), the
shard write time per image, and the largest float16 round-trip error of the maps (relative).

    python benchmarks/bench_shards.py                # 8 photos
    python benchmarks/bench_shards.py --images 2     # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "camera.png"]


def folder_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=64, help="images per shard (a shard is 2 files)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import skimage
    import torch

    from featurelens.imaging import load_image
    from featurelens.models import load_model
    from featurelens.network.build import build_bundle
    from featurelens.network.layers import select_layers
    from featurelens.network.pipeline import NetworkParams, explain_network
    from featurelens.network.shards import ImageRecord, ShardStore, validate_shards, write_shard
    from featurelens.targets import as_target

    root = Path(skimage.__file__).parent / "data"
    paths = [root / p for p in PHOTOS[: args.images]]
    spec = load_model("efficientnet_lite0")
    layers = select_layers(spec.model, spec.sample_input(), None)
    params = NetworkParams(mode="fast", effect=False)
    print(f"{len(paths)} real photos, {len(layers)} default layers, mode {params.mode}; load {os.getloadavg()}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        build_bundle(spec, paths, tmp / "old", layers=layers, params=params, batch_size=2)
        t_old = time.perf_counter() - t0
        old_bytes, old_files = folder_size(tmp / "old")

        records = []
        t0 = time.perf_counter()
        for p in paths:
            pil = load_image(p)
            res = explain_network(spec.model, spec.prepare([pil]), layers, as_target(None), params)[0]
            maps, meta = {}, {"predicted_index": res.predicted_index, "score": res.score, "layers": {}}
            for lr in res.layers:
                if lr.clusters:
                    maps[lr.name] = np.stack([c.feature_map for c in lr.clusters]).astype(np.float32)
                meta["layers"][lr.name] = [{"channels": [int(x) for x in c.channels], "weight": float(c.weight)}
                                           for c in lr.clusters]
            records.append(ImageRecord(p.stem, meta, maps, spec.model_view(pil)))
        t_explain = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in range(0, len(records), args.shard_size):
            write_shard(tmp / "new", f"s{s // args.shard_size:04d}", records[s: s + args.shard_size])
        t_write = time.perf_counter() - t0
        new_bytes, new_files = folder_size(tmp / "new")
        assert validate_shards(tmp / "new") == []
        err = 0.0
        back = {r.image_id: r for r in ShardStore(tmp / "new")}
        for r in records:
            for name, m in r.maps.items():
                d = np.abs(back[r.image_id].maps[name] - m)
                err = max(err, float((d / np.maximum(np.abs(m), 1e-30))[np.abs(m) > 2.0**-14].max(initial=0)))
    n = len(paths)
    n_clusters = sum(len(v) for r in records for v in r.meta["layers"].values())
    fig = {
        "images": n, "layers": len(layers), "clusters_per_image": n_clusters / n,
        "old_bytes_per_image": old_bytes / n, "old_files_per_image": old_files / n,
        "new_bytes_per_image": new_bytes / n, "new_files_per_image": new_files / n,
        "bytes_ratio": old_bytes / new_bytes, "shard_write_s_per_image": t_write / n,
        "old_bundle_s_per_image": t_old / n, "explain_s_per_image": t_explain / n, "max_rel_error": err,
    }
    print(f"clusters per image: {fig['clusters_per_image']:.0f}")
    print(f"today's bundle: {fig['old_bytes_per_image'] / 1e6:.2f} MB and {fig['old_files_per_image']:.0f} files per image "
          f"({fig['old_bundle_s_per_image']:.2f} s/image to explain and write)")
    print(f"shards ({args.shard_size} images/shard): {fig['new_bytes_per_image'] / 1e3:.0f} KB and "
          f"{fig['new_files_per_image']:.2f} files per image (write {fig['shard_write_s_per_image'] * 1e3:.0f} ms/image; "
          f"explain alone {fig['explain_s_per_image']:.2f} s/image)")
    print(f"ratio today / shards: {fig['bytes_ratio']:.0f}x smaller (target >= 30x; <= 300 KB and <= 3 files per image)")
    print(f"float16 maps: largest relative error {err:.2e} (bound 2^-11 = {2.0**-11:.2e})")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()
