"""A static HTML viewer of an explanation bundle: ``index.html`` plus lazily loaded data files.

It opens from disk with no server (``file://``; browsers block ``fetch`` of local files), for bundles of
thousands of images:

* ``index.html`` embeds only the image list (id, class, prediction, score, chunk number), the layers, the
  colormap table and the rendering parameters;
* ``viewer/chunk-NNNN.js`` holds ``chunk_size`` images each: the display photo (JPEG, base64), the
  metadata and every cluster map **at feature resolution** (uint8, ``q = round(255·(m − min m)/(max m − min m))``).
  The page loads a chunk with a ``<script>`` element only when one of its images is shown;
* the page renders each map in the browser on a ``<canvas>`` with the rule of
  :mod:`featurelens.network.render` (bilinear upsampling, min-max, optional smoothing, the same 256-entry
  colormap table, ``round((1 − α)·photo + α·heat)``), so it shows what the Python report shows.

The image list can be filtered by class (the true class, else the predicted one) and is paged.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featurelens.network.bundle import SCHEMA, Bundle, load_bundle
from featurelens.network.render import DEFAULT_ALPHA, colormap_lut, load_photo

CHUNK_SIZE = 20
PAGE_SIZE = 50
DATA_DIR = "viewer"


def quantize_map(m: np.ndarray) -> np.ndarray:
    """``round(255·(m − min m)/(max m − min m))`` as uint8 (zeros for a constant map). Rendering applies a
    min-max after the upsampling, which is affine-equivariant, so this keeps the displayed map to 1/255."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float64))
    lo, hi = float(m.min()), float(m.max())
    if hi - lo <= 1e-12:
        return np.zeros(m.shape, dtype=np.uint8)
    return np.round((m - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _photo_uri(rgb: np.ndarray, quality: int = 88) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + _b64(buf.getvalue())


def _image_class(im: Any) -> str:
    return im.true_class or im.predicted_class


def image_record(bundle: Bundle, im: Any) -> dict[str, Any]:
    """What a chunk file holds of one image."""
    photo = load_photo(bundle, im)
    clusters = []
    for c in im.clusters:
        q = quantize_map(bundle.load_map(c))
        clusters.append({"id": c.id, "layer": c.layer, "index": c.index, "size": len(c.channels),
                         "weight": c.weight, "effect": c.effect, "h": int(q.shape[0]), "w": int(q.shape[1]),
                         "map": _b64(q.tobytes())})
    return {"id": im.id, "source": im.source, "true_class": im.true_class, "predicted_class": im.predicted_class,
            "score": im.score, "photo_h": int(photo.shape[0]), "photo_w": int(photo.shape[1]),
            "photo": _photo_uri(photo), "layer_stats": im.layer_stats, "clusters": clusters}


def _js(obj: Any) -> str:
    # inside a <script>: only "</" could end it early
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def _chunks(images: list[Any], size: int) -> Iterable[tuple[int, list[Any]]]:
    for n, start in enumerate(range(0, len(images), size)):
        yield n, images[start:start + size]


def render_viewer(bundle_dir: str | Path, chunk_size: int = CHUNK_SIZE, bundle: Bundle | None = None,
                  page_size: int = PAGE_SIZE) -> str:
    """The viewer page (``index.html``) for the bundle at ``bundle_dir`` as an HTML string."""
    bundle = bundle or load_bundle(bundle_dir)
    sigma = (bundle.method or {}).get("smooth_sigma")
    meta = {
        "schema": SCHEMA, "version": bundle.version, "model": bundle.model, "target": bundle.target, "method": bundle.method, "params": bundle.params,
        "layers": [{"name": ly.name, "channels": ly.channels, "activation": ly.activation,
                    "feature_size": ly.feature_size} for ly in bundle.layers],
        "class_names": bundle.class_names, "chunk_size": chunk_size, "page_size": page_size, "data_dir": DATA_DIR,
        "render": {"alpha": DEFAULT_ALPHA, "smooth_sigma": sigma},
        "images": [{"id": im.id, "c": _image_class(im), "p": im.predicted_class, "s": im.score, "k": n}
                   for n, chunk in _chunks(bundle.images, chunk_size) for im in chunk],
    }
    template = resources.files("featurelens.network").joinpath("viewer.html").read_text(encoding="utf-8")
    lut = _js(colormap_lut().tolist())
    return template.replace("__VIEWER_JSON__", _js(meta)).replace("__LUT_JSON__", lut)


def write_viewer(bundle_dir: str | Path, name: str = "index.html", chunk_size: int = CHUNK_SIZE,
                 page_size: int = PAGE_SIZE) -> Path:
    """Write the viewer into the bundle folder (``index.html`` and ``viewer/chunk-*.js``) and return the
    page's path (open it with any browser)."""
    bundle_dir = Path(bundle_dir)
    if bundle_dir.name == "bundle.json":
        bundle_dir = bundle_dir.parent
    bundle = load_bundle(bundle_dir)
    data = bundle_dir / DATA_DIR
    data.mkdir(exist_ok=True)
    for old in data.glob("chunk-*.js"):
        old.unlink()
    for n, chunk in _chunks(bundle.images, chunk_size):
        records = [image_record(bundle, im) for im in chunk]
        text = f"FLViewer.chunk({n},{_js(records)});\n"
        tmp = data / f"chunk-{n:04d}.js.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(data / f"chunk-{n:04d}.js")
    out = bundle_dir / name
    out.write_text(render_viewer(bundle_dir, chunk_size, bundle, page_size), encoding="utf-8")
    return out
