"""Smoothing and meta-methods (aug_smooth, eigen_smooth, RefineCAM fusion, SESS) against slow explicit formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featurelens.api import Explainer
from featurelens.errors import MethodError
from featurelens.imaging import normalize_maps
from featurelens.methods import Method, method_names
from featurelens.smoothing import SESS, AugSmooth, window_starts
from featurelens.targets import ClassTarget


def _explicit_eigen(channels: np.ndarray) -> np.ndarray:
    """First principal component by an eigen-decomposition of the covariance, sign by the plain sum."""
    k, h, w = channels.shape
    m = channels.reshape(k, h * w).T.astype(np.float64)
    mc = m - m.mean(axis=0, keepdims=True)
    vals, vecs = np.linalg.eigh(mc.T @ mc)
    p = mc @ vecs[:, np.argmax(vals)]
    plain = m.sum(axis=1)
    if np.dot(p, plain - plain.mean()) < 0:
        p = -p
    return np.maximum(p, 0).reshape(h, w)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_eigen_smooth_is_the_first_principal_component(tiny_cnn, tiny_input, method):
    ex = Explainer(tiny_cnn, "relu2")
    exp = ex.explain(tiny_input, method, eigen_smooth=True)
    # the inputs of the formula, computed by hand from the engine's capture
    from featurelens.engine import capture

    cap = capture(tiny_cnn, tiny_input, "relu2")
    a, g = cap.activations["relu2"][0], cap.gradients["relu2"][0]
    if method == "gradcam":
        c = g.mean(dim=(2, 3))[:, :, None, None] * a
    elif method == "hirescam":
        c = g * a
    else:
        c = torch.relu(g) * a
    for b in range(tiny_input.shape[0]):
        expected = _explicit_eigen(c[b].numpy())
        assert np.allclose(exp.raw_maps["relu2"][b].numpy(), expected, atol=1e-4), b
    assert exp.weights["relu2"] is None and exp.meta["eigen_smooth"] is True
    plain = ex.explain(tiny_input, method)
    assert not torch.allclose(plain.raw_maps["relu2"], exp.raw_maps["relu2"])


def test_eigen_smooth_without_channel_maps_is_a_clear_error(tiny_cnn, tiny_input):
    class Opaque(Method):
        name = "opaque-test"

        def __call__(self, layer, ctx):
            return layer.activation.sum(1), None

    with pytest.raises(MethodError, match="eigen_smooth needs the per-channel maps"):
        Explainer(tiny_cnn, "relu2").explain(tiny_input, Opaque(), eigen_smooth=True)


def _flip_scale_reference(ex, x, method, aug):
    h, w = x.shape[-2:]
    cls = ex.explain(x, method).target_indices
    total = torch.zeros(x.shape[0], h, w)
    for scale in aug.scales:
        for flip in aug.flips:
            size = (round(scale * h), round(scale * w))
            xt = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            if flip:
                xt = torch.flip(xt, dims=[3])
            m = ex.explain(xt, method, ClassTarget(cls)).map
            if flip:
                m = torch.flip(m, dims=[2])
            if tuple(m.shape[-2:]) != (h, w):
                m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            total += m
    return normalize_maps(total / (len(aug.scales) * len(aug.flips)))


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_aug_smooth_averages_the_mapped_back_maps(tiny_cnn, tiny_input, method):
    aug = AugSmooth(flips=(False, True), scales=(1.0, 1.5))
    ex = Explainer(tiny_cnn, "relu2")
    exp = ex.explain(tiny_input, method, aug_smooth=aug)
    assert torch.allclose(exp.map, _flip_scale_reference(ex, tiny_input, method, aug), atol=1e-5)
    assert exp.map.shape == (3, 10, 12) and exp.weights["relu2"] is None
    # the explained class is the unaugmented prediction
    assert torch.equal(exp.target_indices, tiny_cnn(tiny_input).argmax(1))
    assert exp.meta["aug_smooth"] == {"flips": [False, True], "scales": [1.0, 1.5]}


def test_aug_smooth_default_has_flips_and_scales(tiny_cnn, tiny_input):
    aug = AugSmooth()
    assert aug.transforms == [(f, s) for s in (1.0, 0.9, 1.1) for f in (False, True)]
    ex = Explainer(tiny_cnn, "relu2")
    assert torch.allclose(
        ex.explain(tiny_input, "gradcam", aug_smooth=True).map,
        _flip_scale_reference(ex, tiny_input, "gradcam", aug),
        atol=1e-5,
    )
    with pytest.raises(MethodError):
        AugSmooth(scales=(0.0,))


def test_refine_fusion_is_the_product_of_max_scaled_layer_maps(tiny_cnn, tiny_input):
    ex = Explainer(tiny_cnn, ["relu1", "relu2"])
    exp = ex.explain(tiny_input, "gradcam", fuse="refine")
    for b in range(3):
        prod = torch.ones(10, 12)
        for layer in ("relu1", "relu2"):
            m = exp.maps[layer][b]
            prod = prod * (m / m.max() if m.max() > 0 else m)
        expected = (prod - prod.min()) / (prod.max() - prod.min()) if prod.max() > prod.min() else prod * 0
        assert torch.allclose(exp.fused[b], expected, atol=1e-6)
    assert exp.meta["fuse"] == "refine"
    with pytest.raises(MethodError, match="unknown fusion rule"):
        ex.explain(tiny_input, "gradcam", fuse="median")


def test_window_starts_cover_the_length():
    assert window_starts(10, 10, 5) == [0]
    assert window_starts(15, 10, 5) == [0, 5]
    assert window_starts(17, 10, 5) == [0, 5, 7]


def _sess_reference(model, x, method, sess):
    """Per sample, per window: confidence, pre-filter, map of the crop, weighted average on the canvas."""
    h, w = x.shape[-2:]
    out = torch.zeros(x.shape[0], h, w)
    ex = Explainer(model, "relu2")
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        cls = int(model(xb).argmax(1))
        windows = []
        for s in sess.scales:
            sh, sw = max(h, round(s * h)), max(w, round(s * w))
            xs = xb if (sh, sw) == (h, w) else F.interpolate(xb, size=(sh, sw), mode="bilinear", align_corners=False)
            for top in window_starts(sh, h, max(1, round(sess.stride * h))):
                for left in window_starts(sw, w, max(1, round(sess.stride * w))):
                    crop = xs[..., top : top + h, left : left + w]
                    conf = float(torch.softmax(model(crop), 1)[0, cls])
                    windows.append((s, sh, sw, top, left, crop, conf))
        kept = []
        for s in sess.scales:
            group = sorted([win for win in windows if win[0] == s], key=lambda win: -win[6])
            kept += group[: max(1, math.ceil(sess.keep * len(group)))]
        low = min(win[6] for win in kept)
        num, den = torch.zeros(h, w), torch.zeros(h, w)
        for _s, sh, sw, top, left, crop, conf in kept:
            weight = conf - min(low, 0.0) + 1e-6
            canvas, cover = torch.zeros(1, 1, sh, sw), torch.zeros(1, 1, sh, sw)
            canvas[..., top : top + h, left : left + w] = ex.explain(crop, method, ClassTarget(cls)).map[0]
            cover[..., top : top + h, left : left + w] = 1.0
            back = F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            cov = F.interpolate(cover, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            num += weight * back
            den += weight * cov
        out[b] = num / den.clamp_min(1e-12)
    return normalize_maps(out)


def test_sess_fuses_windows_at_several_scales(tiny_cnn, tiny_input):
    sess = SESS(scales=(1.0, 1.5, 2.0), stride=0.5, keep=0.5)
    with torch.no_grad():
        expected = _sess_reference(tiny_cnn, tiny_input, "gradcam", sess)
    exp = Explainer(tiny_cnn, "relu2").explain(tiny_input, "gradcam", sess=sess)
    assert torch.allclose(exp.map, expected, atol=1e-5)
    plain = Explainer(tiny_cnn, "relu2").explain(tiny_input, "gradcam")
    assert not torch.allclose(exp.map, plain.map, atol=1e-3)
    with pytest.raises(MethodError):
        SESS(scales=(0.5,))


@pytest.mark.parametrize("method", method_names())
def test_every_method_with_every_smoothing_keeps_the_invariants(tiny_cnn, tiny_input, method):
    ex = Explainer(tiny_cnn, "relu2")
    options = [
        {"aug_smooth": AugSmooth(scales=(1.0, 1.2))},
        {"sess": SESS(scales=(1.0, 1.5))},
        {"eigen_smooth": True},
    ]
    for opts in options:
        try:
            batch = ex.explain(tiny_input, method, **opts)
        except MethodError as exc:  # only eigen_smooth may refuse, and only for want of channel maps
            assert "eigen_smooth" in opts and "per-channel maps" in str(exc)
            continue
        for layer, m in batch.maps.items():
            assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1, (opts, layer)
        single = ex.explain(tiny_input[1:2], method, **opts)
        assert torch.allclose(batch.map[1], single.map[0], atol=1e-4), opts
