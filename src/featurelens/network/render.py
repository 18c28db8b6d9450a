"""On-demand rendering of cluster maps: feature-resolution map + photo → image-resolution map and overlay.

A bundle stores each cluster map at feature resolution (``h×w``, a few hundred numbers); every consumer
that needs it at image resolution renders it here, with the same rule as the pipeline's display step
(:func:`featurelens.network.clustering.finish_map`):

* image map: ``M = minmax(up(m))``, ``up`` = bilinear upsampling to the photo's ``H×W`` with
  ``align_corners=False`` (source coordinate ``s = (y + ½)·h/H − ½``, clamped to ``[0, h − 1]``);
  when the bundle's ``method.smooth_sigma`` is set, ``M = minmax(G_σ' * M)`` with ``σ' = σ·H/H_model``
  (σ is in pixels of the model input; a display photo of another size scales it);
* colours: ``heat = round(255·jet(M))`` with matplotlib's 256-entry ``jet`` table
  (``jet(v) = LUT[min(⌊256·v⌋, 255)]``; :func:`colormap_lut`, the same table the viewer uses in the browser);
* overlay: ``round((1 − α)·photo + α·heat)``, ``α = 0.5``.

The game (at import), the labels report and the static viewer (in JavaScript, on a canvas) all use this
rule, so an overlay looks the same wherever it is drawn.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from featurelens.imaging import overlay
from featurelens.network.clustering import finish_map

DEFAULT_ALPHA = 0.5
DEFAULT_COLORMAP = "jet"


@lru_cache(maxsize=8)
def colormap_lut(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The colormap as a ``[256, 3]`` uint8 table: entry ``i`` is the colour of every value in
    ``[i/256, (i+1)/256)`` (matplotlib's own quantisation), rounded as :func:`featurelens.imaging.colorize`."""
    import matplotlib

    cmap = matplotlib.colormaps[name].resampled(256)
    rgba = cmap(np.arange(256))
    return (rgba[:, :3] * 255.0 + 0.5).astype(np.uint8)


def image_map(feature_map: np.ndarray, size_hw: tuple[int, int], smooth_sigma: float | None = None) -> np.ndarray:
    """The cluster map at image resolution, float32 ``[H, W]`` in [0, 1] (module docstring)."""
    m = torch.from_numpy(np.ascontiguousarray(np.nan_to_num(np.asarray(feature_map, dtype=np.float32))))
    if m.ndim != 2:
        raise ValueError(f"a cluster map must be 2-D, got shape {tuple(m.shape)}")
    return finish_map(m, (int(size_hw[0]), int(size_hw[1])), smooth_sigma).numpy().astype(np.float32)


def overlay_image(photo: np.ndarray, imap: np.ndarray, alpha: float = DEFAULT_ALPHA,
                  colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The image-resolution map over the photo (H×W×3 uint8), see the module docstring."""
    return overlay(photo, imap, alpha=alpha, colormap=colormap)


def display_sigma(bundle: Any, height: int) -> float | None:
    """The bundle's smoothing σ (``method.smooth_sigma``, pixels of the model input) at a photo of ``height``."""
    sigma = (bundle.method or {}).get("smooth_sigma")
    if not sigma:
        return None
    model_h = (bundle.model.get("input_size") or [height])[0] or height
    return float(sigma) * height / float(model_h)


def load_photo(bundle: Any, image: Any) -> np.ndarray:
    """The image's stored photo (the display photo of a sharded bundle) as H×W×3 uint8 RGB."""
    getter = getattr(bundle, "load_photo", None)
    if callable(getter):
        return np.asarray(getter(image))
    with Image.open(bundle.path(image.file)) as im:
        return np.asarray(im.convert("RGB"))


def render_cluster(bundle: Any, cluster: Any, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image map, overlay)`` of one cluster of ``bundle`` at the size of ``photo``."""
    h, w = photo.shape[:2]
    imap = image_map(bundle.load_map(cluster), (h, w), display_sigma(bundle, h))
    return imap, overlay_image(photo, imap)


def render_image_maps(bundle: Any, clusters: list[Any], size_hw: tuple[int, int]) -> list[np.ndarray]:
    """Image maps of several clusters of one image (one bilinear call for all of them)."""
    if not clusters:
        return []
    sigma = display_sigma(bundle, size_hw[0])
    maps = [np.asarray(bundle.load_map(c), dtype=np.float32) for c in clusters]
    shapes = {m.shape for m in maps}
    if len(shapes) > 1 or sigma:
        return [image_map(m, size_hw, sigma) for m in maps]
    from featurelens.imaging import normalize_maps, resize_maps

    t = torch.from_numpy(np.nan_to_num(np.stack(maps)))
    up = normalize_maps(resize_maps(t, size_hw))
    return list(up.numpy().astype(np.float32))
