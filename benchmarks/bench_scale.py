"""Downstream at scale: viewer first image, game import and label processing on a 1,000-image bundle.

How the bundle is made (printed and written to the JSON too):

* 8 **real photos** from scikit-image are explained by the real pipeline (EfficientNet-Lite0, its default
  layers, fast mode, no effects): real cluster counts, channels, weights and feature-resolution maps;
* the other images are **augmented views** of them, clearly marked (id ``aug0123_<photo>``, source
  ``augmented: crop (x0, y0, x1, y1) [+ flip] of skimage:<photo>``): a seeded random crop (60-95 % of the
  short side), a horizontal flip half of the time, resized to the model input. Their cluster data is
  **synthesised cheaply** from their photo's real clusters (not re-run through the network): each map is
  cropped and flipped alongside the photo (bilinear, at feature resolution) plus 2 % noise, min-max
  again; channels and weights are the photo's;
* everything is written as a valid version-3 bundle (float16 shards of 64 images, display JPEGs, index)
  through :func:`featurelens.network.shards.write_shard` and :func:`featurelens.network.bundle.write_manifest`.

Measured, each against its target and a baseline from the same run:

* viewer: ``write_viewer`` time, then Chromium (Debian's, via Playwright) opening ``index.html`` from disk:
  time from navigation start to the first image fully rendered (photo, layer strip, every cluster overlay;
  ``FLViewer.firstShown``) — target ≤ 2 s; baseline: the same on a 20-image bundle;
* game: ``featurelens game import`` into a new SQLite file — target ≤ 60 s; baseline: what pre-rendering
  every reveal step and overlay at import (the former import) costs, measured on 10 images and scaled;
* labels: ``read_labels`` + ``process_labels`` + ``save`` of 100,000 simulated label rows
  (:func:`featurelens.labels.synthetic.simulated_export`, marked campaign ``simulated``), the Sentence-BERT
  model loaded beforehand (excluded) — target ≤ 60 s; baseline: 10,000 rows (linear scaling ratio).

    python benchmarks/bench_scale.py                         # 1,000 images, 100,000 rows
    python benchmarks/bench_scale.py --images 100 --rows 10000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTOS = {"chelsea": "cat", "coffee": "coffee mug", "astronaut": "astronaut", "rocket": "rocket",
          "motorcycle_left": "motorcycle", "hubble_deep_field": "galaxy", "retina": "retina", "ihc": "tissue"}
SUFFIX = {"hubble_deep_field": ".jpg", "retina": ".jpg", "rocket": ".jpg"}


def _load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _crop_map(m: np.ndarray, box: tuple[float, float, float, float], flip: bool, rng: np.random.Generator) -> np.ndarray:
    """The map of a crop (box in [0, 1] coordinates of the photo), at the same feature resolution."""
    from PIL import Image

    h, w = m.shape
    im = Image.fromarray(np.asarray(m, dtype=np.float32), mode="F")
    out = np.asarray(im.resize((w, h), Image.BILINEAR, box=(box[0] * w, box[1] * h, box[2] * w, box[3] * h)))
    if flip:
        out = out[:, ::-1]
    out = out + 0.02 * rng.standard_normal(out.shape)
    lo, hi = out.min(), out.max()
    return ((out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)).astype(np.float32)


def build_scale_bundle(out: Path, n_images: int, shard_size: int = 64, seed: int = 0) -> dict:
    """Write the benchmark bundle at ``out`` (module docstring) and return how it was made."""
    import skimage
    from PIL import Image

    from featurelens.models import load_model
    from featurelens.network.build import ExplainImages, describe_target
    from featurelens.network.bundle import write_manifest
    from featurelens.network.layers import resolve_units
    from featurelens.network.pipeline import NetworkParams
    from featurelens.network.shards import ImageRecord, write_shard
    from featurelens.targets import as_target

    root = Path(skimage.__file__).parent / "data"
    names = list(PHOTOS)
    spec = load_model("efficientnet_lite0")
    units = resolve_units(spec.model, spec.sample_input(), None)
    params = NetworkParams(mode="fast", effect=False)
    t0 = time.perf_counter()
    explain = ExplainImages(params, None, batch_size=2)
    payloads = [(str(root / f"{n}{SUFFIX.get(n, '.png')}"), None, PHOTOS[n]) for n in names]
    real = explain.many((spec, units), [f"real_{n}" for n in names], payloads)
    t_real = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    size = tuple(spec.input_size)
    records: list = []
    n_written = 0

    def flush(final: bool = False) -> None:
        nonlocal records, n_written
        while len(records) >= shard_size or (final and records):
            part, records = records[:shard_size], records[shard_size:]
            write_shard(out / "shards", f"s{n_written // shard_size:05d}", part, display_size=256)
            n_written += len(part)

    for i in range(n_images):
        k = i % len(names)
        src = real[k]
        if i < len(names):
            records.append(src)
        else:
            photo = src.display_image()
            s = rng.uniform(0.6, 0.95)
            x0, y0 = rng.uniform(0, 1 - s, size=2)
            box = (float(x0), float(y0), float(x0 + s), float(y0 + s))
            flip = bool(rng.random() < 0.5)
            W, H = photo.size
            view = photo.resize(size[::-1], Image.BILINEAR, box=(box[0] * W, box[1] * H, box[2] * W, box[3] * H))
            if flip:
                view = view.transpose(Image.FLIP_LEFT_RIGHT)
            maps = {layer: np.stack([_crop_map(m, box, flip, rng) for m in stack]) for layer, stack in src.maps.items()}
            meta = dict(src.meta)
            meta["source"] = (f"augmented: crop ({box[0]:.3f}, {box[1]:.3f}, {box[2]:.3f}, {box[3]:.3f})"
                              f"{' + flip' if flip else ''} of skimage:{names[k]}")
            records.append(ImageRecord(f"aug{i:04d}_{names[k]}", meta, maps, view))
        flush()
    flush(final=True)
    header = {"model": {"name": spec.name, "input_size": list(spec.input_size)},
              "target": describe_target(as_target(None)), "class_names": list(spec.class_names or []),
              "params": {"layers": [u.name for u in units], **params.to_dict()}, "method": params.to_dict(),
              "storage": {"shards": "shards", "encoding": "float16", "display_size": 256,
                          "images_per_shard": shard_size},
              "dataset": {"layout": "benchmark", "images": n_images,
                          "note": f"{len(names)} real photos + {max(0, n_images - len(names))} augmented crops "
                                  "(cluster data synthesised from the real photos' clusters)"}}
    bundle = write_manifest(out, header, order=None)
    files = [p for p in out.rglob("*") if p.is_file()]
    return {"images": len(bundle.images), "real_photos": len(names), "augmented": max(0, n_images - len(names)),
            "layers": len(bundle.layers), "clusters": len(bundle.clusters()),
            "clusters_per_image": len(bundle.clusters()) / len(bundle.images),
            "bytes_per_image": sum(p.stat().st_size for p in files) / len(bundle.images),
            "files": len(files), "real_pipeline_s": t_real}


def time_viewer(bundle_dir: Path, page_size: int = 50) -> dict:
    """write_viewer, then Chromium: navigation start → first image rendered (ms), and the wall time."""
    from playwright.sync_api import sync_playwright

    from featurelens.network.viewer import write_viewer

    t0 = time.perf_counter()
    index = write_viewer(bundle_dir, page_size=page_size)
    t_write = time.perf_counter() - t0
    args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
    runs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        for _ in range(3):
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
            w0 = time.perf_counter()
            page.goto(index.as_uri())
            page.wait_for_function("window.FLViewer && FLViewer.firstShown !== null", timeout=60_000)
            wall = time.perf_counter() - w0
            first = page.evaluate("FLViewer.firstShown") / 1000.0
            n = page.locator("figure canvas").count()
            if errors:
                raise RuntimeError(f"viewer errors: {errors}")
            runs.append((first, wall, n))
            page.close()
        browser.close()
    best = min(runs)
    return {"write_viewer_s": t_write, "first_image_s": best[0], "first_image_s_runs": [r[0] for r in runs],
            "goto_to_first_image_wall_s": best[1], "overlays_rendered": best[2],
            "index_html_bytes": index.stat().st_size,
            "chunk_bytes": sum(p.stat().st_size for p in (bundle_dir / "viewer").glob("chunk-*.js"))}


def time_game_import(bundle_dir: Path, tmp: Path) -> dict:
    from featurelens.cli.main import main

    db = tmp / f"game_{bundle_dir.name}.sqlite3"
    t0 = time.perf_counter()
    rc = main(["game", "import", str(bundle_dir), "--campaign", f"scale-{bundle_dir.name}", "--database-url", str(db)])
    t = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError("game import failed")
    return {"import_s": t, "db_bytes": db.stat().st_size + sum(p.stat().st_size for p in tmp.glob(f"{db.name}-*"))}


def prerender_baseline(bundle_dir: Path, n: int = 10) -> dict:
    """The former import rendered every reveal step and the overlay of every map at import: its cost per
    image, measured on ``n`` images."""
    from featurelens.game.masks import encode_jpeg, reveal_series
    from featurelens.network.bundle import load_bundle
    from featurelens.network.render import load_photo, overlay_image

    bundle = load_bundle(bundle_dir)
    t0 = time.perf_counter()
    nbytes = 0
    for im in bundle.images[:n]:
        photo = load_photo(bundle, im)
        for c in im.clusters:
            m = bundle.load_image_map(c, size=photo.shape[:2])
            nbytes += sum(len(b) for b in reveal_series(photo, m)) + len(encode_jpeg(overlay_image(photo, m)))
    per_image = (time.perf_counter() - t0) / n
    return {"prerender_s_per_image": per_image, "prerender_bytes_per_image": nbytes / n}


def label_rows(bundle_dir: Path, n_rows: int, seed: int = 0) -> list:
    """``n_rows`` simulated label rows over the bundle: every class gets a plan of real-looking concept
    families (synonyms, plurals, typos) per layer and cluster, noise clusters get noise words."""
    from featurelens.labels.synthetic import CAT_FAMILIES, MUG_FAMILIES, simulated_export
    from featurelens.network.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    pool = {**CAT_FAMILIES, **MUG_FAMILIES}
    concepts = sorted(pool)
    classes = sorted({im.true_class or im.predicted_class for im in bundle.images})
    plan, families = {}, {}
    for j, cls in enumerate(classes):
        mine = [concepts[(j + t) % len(concepts)] for t in range(4)]
        families[cls] = {c: pool[c] for c in mine}
        plan[cls] = {layer.name: [*mine[(li % 2):], None] for li, layer in enumerate(bundle.layers)}
    rows: list = []
    players = 1
    while len(rows) < n_rows:
        players += 1
        rows = simulated_export(bundle, players=players, seed=seed, plan=plan, families=families)
    rows = rows[:n_rows]
    for i, r in enumerate(rows):
        r.row = i + 1
    return rows


def time_labels(bundle_dir: Path, rows: list, tmp: Path, model) -> dict:
    from featurelens.labels.embed import SentenceEmbedder
    from featurelens.labels.io import read_labels, write_labels_csv
    from featurelens.labels.pipeline import process_labels
    from featurelens.network.bundle import load_bundle

    csv = write_labels_csv(rows, tmp / f"labels_{len(rows)}.csv")
    bundle = load_bundle(bundle_dir)
    embedder = SentenceEmbedder()
    embedder._model = model  # the loaded model, with an empty text cache: every run embeds from scratch
    t0 = time.perf_counter()
    records = read_labels(csv)
    t_read = time.perf_counter() - t0
    processed = process_labels(bundle, records, embedder=embedder)
    t_proc = time.perf_counter() - t0 - t_read
    processed.save(tmp / f"processed_{len(rows)}")
    total = time.perf_counter() - t0
    return {"rows": len(rows), "read_s": t_read, "process_s": t_proc, "total_s": total,
            "kept": processed.counts.get("kept"), "groups": processed.counts.get("groups"),
            "unique_texts": len({r.label for r in records})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--json", default="docs/results/scale.json")
    ap.add_argument("--skip", nargs="*", default=[], choices=["viewer", "game", "labels"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fig: dict = {"load_average_before": _load_avg()}
    print(f"load average: {fig['load_average_before']}")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        big = tmp / "big"
        fig["bundle"] = build_scale_bundle(big, args.images)
        small = tmp / "small"
        fig["small_bundle"] = build_scale_bundle(small, 20)
        fig["bundle"]["build_s"] = time.perf_counter() - t0
        b = fig["bundle"]
        print(f"bundle: {b['images']} images ({b['real_photos']} real photos explained by the pipeline in "
              f"{b['real_pipeline_s']:.0f} s, {b['augmented']} augmented crops with synthesised cluster data), "
              f"{b['layers']} layers, {b['clusters_per_image']:.0f} clusters/image, "
              f"{b['bytes_per_image'] / 1e3:.0f} KB/image, {b['files']} files")
        if "viewer" not in args.skip:
            v = fig["viewer"] = time_viewer(big)
            vs = fig["viewer_small"] = time_viewer(small)
            v["ratio_to_target"] = v["first_image_s"] / 2.0
            v["ratio_to_20_images"] = v["first_image_s"] / vs["first_image_s"]
            print(f"viewer: write_viewer {v['write_viewer_s']:.1f} s; Chromium first image (photo + "
                  f"{v['overlays_rendered']} overlays) {v['first_image_s']:.2f} s after navigation start "
                  f"(target <= 2 s: {'met' if v['first_image_s'] <= 2 else 'MISSED'}, "
                  f"{v['ratio_to_target']:.2f}x the target; 20-image bundle {vs['first_image_s']:.2f} s, "
                  f"ratio {v['ratio_to_20_images']:.2f})")
        if "game" not in args.skip:
            g = fig["game"] = time_game_import(big, tmp)
            g.update(prerender_baseline(big))
            g["prerender_estimate_s"] = g["prerender_s_per_image"] * b["images"]
            g["speedup_vs_prerender"] = g["prerender_estimate_s"] / g["import_s"]
            print(f"game import: {g['import_s']:.1f} s on SQLite ({g['db_bytes'] / 1e6:.0f} MB; target <= 60 s: "
                  f"{'met' if g['import_s'] <= 60 else 'MISSED'}); pre-rendering every step at import would take "
                  f"{g['prerender_estimate_s']:.0f} s ({g['prerender_s_per_image']:.2f} s/image measured on 10, "
                  f"{g['prerender_bytes_per_image'] * b['images'] / 1e9:.1f} GB of JPEGs): "
                  f"{g['speedup_vs_prerender']:.0f}x faster")
        if "labels" not in args.skip:
            from featurelens.labels.embed import SentenceEmbedder

            t0 = time.perf_counter()
            model = SentenceEmbedder().model
            t_model = time.perf_counter() - t0
            rows = label_rows(big, args.rows)
            base = time_labels(big, rows[: max(1, args.rows // 10)], tmp, model)
            lab = time_labels(big, rows, tmp, model)
            lab.update({"model_load_s": t_model, "baseline_rows": base["rows"], "baseline_total_s": base["total_s"],
                        "scaling_ratio": lab["total_s"] / base["total_s"], "ratio_to_target": lab["total_s"] / 60})
            fig["labels"] = lab
            print(f"labels: {lab['rows']} rows ({lab['unique_texts']} distinct texts) read {lab['read_s']:.1f} s + "
                  f"processed {lab['process_s']:.1f} s = {lab['total_s']:.1f} s with saving, model load "
                  f"{t_model:.1f} s excluded (target <= 60 s: {'met' if lab['total_s'] <= 60 else 'MISSED'}); "
                  f"{base['rows']} rows {base['total_s']:.1f} s, ratio {lab['scaling_ratio']:.1f} for 10x rows")
    fig["load_average_after"] = _load_avg()
    print(f"load average after: {fig['load_average_after']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(fig, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
