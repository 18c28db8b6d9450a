"""On-demand rendering of cluster maps: feature-resolution map + photo → image-resolution map and overlay.

A bundle stores each cluster map at feature resolution (``h×w``, a few hundred numbers); every consumer
that needs it at image resolution renders it here, with the same rule as the pipeline's display step
(:func:`featurelens.network.clustering.finish_map`):

* image map: ``M = minmax(up(m))``, ``up`` = bilinear upsampling to the photo's ``H×W`` with
  ``align_corners=False`` (source coordinate ``s = (y + ½)·h/H − ½``, clamped to ``[0, h − 1]``);
  when the bundle's ``method.smooth_sigma`` σ is set, ``M = minmax(G_σ * M)`` (separable Gaussian, radius
  ``⌈3σ⌉``, replicate padding), as :meth:`featurelens.network.bundle.Bundle.load_image_map` does;
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


def load_photo(bundle: Any, image: Any) -> np.ndarray:
    """The image's stored photo (a sharded bundle's display photo) as H×W×3 uint8 RGB."""
    return np.asarray(bundle.display_image(image).convert("RGB"))


def render_cluster(bundle: Any, cluster: Any, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image map, overlay)`` of one cluster of ``bundle`` at the size of ``photo``; the image map is the
    bundle's own (``Bundle.load_image_map``: rendered from the feature-resolution map by this rule)."""
    imap = bundle.load_image_map(cluster, size=photo.shape[:2])
    return imap, overlay_image(photo, imap)
