"""On-demand rendering (network/render.py) against an explicit per-pixel formula, and against a real bundle."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

from featurelens.network import render


def slow_bilinear(m: np.ndarray, H: int, W: int) -> np.ndarray:
    """Bilinear upsampling with align_corners=False, one output pixel at a time."""
    h, w = m.shape
    out = np.zeros((H, W))
    for y in range(H):
        sy = max((y + 0.5) * h / H - 0.5, 0.0)
        y0 = min(math.floor(sy), h - 1)
        y1 = min(y0 + 1, h - 1)
        fy = sy - y0
        for x in range(W):
            sx = max((x + 0.5) * w / W - 0.5, 0.0)
            x0 = min(math.floor(sx), w - 1)
            x1 = min(x0 + 1, w - 1)
            fx = sx - x0
            out[y, x] = ((1 - fy) * ((1 - fx) * m[y0, x0] + fx * m[y0, x1])
                         + fy * ((1 - fx) * m[y1, x0] + fx * m[y1, x1]))
    return out


def slow_overlay(photo: np.ndarray, fmap: np.ndarray, alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    H, W = photo.shape[:2]
    up = slow_bilinear(fmap.astype(np.float64), H, W)
    lo, hi = up.min(), up.max()
    M = (up - lo) / (hi - lo)
    jet = matplotlib.colormaps["jet"]
    out = np.zeros_like(photo)
    for y in range(H):
        for x in range(W):
            r, g, b, _ = jet(float(M[y, x]))  # matplotlib's own lookup, one value at a time
            for ch, c in enumerate((r, g, b)):
                heat = int(c * 255.0 + 0.5)
                out[y, x, ch] = int((1 - alpha) * photo[y, x, ch] + alpha * heat + 0.5)
    return M, out


def test_overlay_matches_the_per_pixel_formula():
    rng = np.random.default_rng(0)
    fmap = rng.random((7, 7)).astype(np.float32)
    photo = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    M, ov = render.image_map(fmap, (40, 56)), None
    ov = render.overlay_image(photo, M)
    M_ref, ov_ref = slow_overlay(photo, fmap)
    assert np.allclose(M, M_ref, atol=1e-5)
    # a pixel whose value sits on a colour-table boundary may round into the neighbouring entry
    diff = np.abs(ov.astype(int) - ov_ref.astype(int))
    assert (diff == 0).mean() > 0.995 and diff.max() <= 3


def test_lut_is_matplotlib_quantisation():
    lut = render.colormap_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    from featurelens.imaging import colorize

    v = np.linspace(0, 1, 4097)
    idx = np.minimum((v * 256).astype(int), 255)
    assert np.array_equal(colorize(v[None])[0], lut[idx])


@pytest.mark.slow
def test_rendered_maps_equal_the_bundle_written_by_the_pipeline(lite0, photo_dir, tmp_path):
    """The map PNGs of a version-2 bundle were made by the pipeline from its full-precision map; rendering
    the stored feature-resolution map gives them back (to 8-bit precision)."""
    from featurelens.network.build import build_bundle
    from featurelens.network.pipeline import NetworkParams

    bundle = build_bundle(lite0, [photo_dir / "chelsea.png"], tmp_path / "b", layers=["head.act"],
                          params=NetworkParams(mode="fast", effect=False))
    im = bundle.images[0]
    photo = render.load_photo(bundle, im)
    assert photo.shape == (im.height, im.width, 3)
    for c in im.clusters:
        m = render.image_map(bundle.load_map(c), photo.shape[:2], bundle.method.get("smooth_sigma"))
        assert np.abs(m - bundle.load_image_map(c)).max() <= 1 / 255 + 1e-6  # the stored 8-bit PNG
        imap, ov = render.render_cluster(bundle, c, photo)
        assert np.array_equal(ov, render.overlay_image(photo, imap))
    # the same bundle as version 3 (shards): the display photo and maps come through the same Bundle API
    from featurelens.network.bundle import upgrade_bundle

    v3 = upgrade_bundle(tmp_path / "b", tmp_path / "v3")
    assert v3.version == 3
    im3 = v3.images[0]
    photo3 = render.load_photo(v3, im3)
    for c in im3.clusters:
        assert c.overlay_png is None
        imap, ov = render.render_cluster(v3, c, photo3)
        assert np.allclose(imap, render.image_map(v3.load_map(c), photo3.shape[:2]), atol=1e-6)
        assert ov.shape == photo3.shape
