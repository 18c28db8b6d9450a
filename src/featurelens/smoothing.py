"""Smoothing and meta-methods that work with any saliency method.

They wrap a *map function* ``fn(x[B, C, H, W], target) -> {method: {layer: maps[B, H, W]}}`` (maps at
the resolution of ``x``, each in [0, 1]; :class:`featurelens.api.Explainer` provides it) and return
a function of the same contract, so they compose (SESS over test-time augmentation, ...):

* :class:`AugSmooth` – test-time augmentation: flips and scales of the input, each map mapped back
  to the input's geometry, averaged;
* :func:`eigen_projection` – ``eigen_smooth``: the first principal component of a method's
  weighted activations instead of their sum;
* :func:`refine_fuse` – the multi-layer rule of RefineCAM: the product of the per-layer maps;
* :class:`SESS` – saliency enhancing with scaling and sliding: windows at several scales, their maps
  fused by a confidence-weighted average.

Under every wrapper the explained target is fixed by the unaugmented image: a class target is
turned into its class indices before the augmented copies run (a flip must not change which class
is explained).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from featurelens.errors import MethodError
from featurelens.imaging import normalize_maps
from featurelens.methods import LayerState, Method, MethodContext

#: ``{method: {layer: maps[B, H, W]}}`` at the resolution of the input
MethodMaps = dict[str, dict[str, Tensor]]
MapFn = Callable[[Tensor, Callable[[Tensor], Tensor]], MethodMaps]


# ---------------------------------------------------------------------------
# eigen_smooth
# ---------------------------------------------------------------------------
def channel_maps(method: Method, layer: LayerState, ctx: MethodContext) -> Tensor:
    """The per-channel contributions ``C[b, k] (h × w)`` whose channel sum is a method's map before ReLU.

    A method provides them with a ``channel_maps(layer, ctx)`` hook (element-wise methods), or through
    its channel ``weights``: ``C_k = w_k · A_k``.
    """
    hook = getattr(method, "channel_maps", None)
    if callable(hook):
        return hook(layer, ctx)  # type: ignore[no-any-return]
    if type(method).weights is not Method.weights:
        w = method.weights(layer, ctx)
        return w.to(layer.activation.dtype)[:, :, None, None] * layer.activation
    raise MethodError(
        f"eigen_smooth needs the per-channel maps of {method.name!r}, which it does not provide "
        "(no channel weights and no channel_maps hook)"
    )


def eigen_projection(channels: Tensor) -> Tensor:
    """``[B, K, h, w]`` → ``[B, h, w]``: the first principal component of the ``h·w`` positions.

    Per sample, ``M`` is the ``(h·w) × K`` matrix of positions × channels, ``M_c = M − mean over
    positions``, ``v₁`` its first right singular vector and the map ``p = M_c v₁``. The sign of a
    singular vector is arbitrary; it is fixed so that ``p`` correlates positively with the plain
    channel sum ``M 1`` (the map without smoothing), then ``ReLU(p)`` is returned.
    """
    b, k, h, w = channels.shape
    m = channels.float().reshape(b, k, h * w).transpose(1, 2)  # [B, hw, K]
    mc = m - m.mean(dim=1, keepdim=True)
    out = torch.zeros(b, h * w, dtype=torch.float32, device=channels.device)
    for i in range(b):
        if not bool(torch.isfinite(mc[i]).all()) or float(mc[i].abs().max()) == 0.0:
            continue  # constant maps: no direction, the map stays zero
        _, _, vh = torch.linalg.svd(mc[i], full_matrices=False)
        p = mc[i] @ vh[0]
        plain = m[i].sum(dim=1)
        if float((p * (plain - plain.mean())).sum()) < 0:
            p = -p
        out[i] = p
    return torch.relu(out).reshape(b, h, w)


# ---------------------------------------------------------------------------
# refine (multi-layer)
# ---------------------------------------------------------------------------
def refine_fuse(maps: Sequence[Tensor]) -> Tensor:
    """RefineCAM's multi-layer rule (pytorch-grad-cam's ``RefineCAM``, arXiv 2605.14641): each layer's
    map scaled to [0, 1] (``m / max m`` of a non-negative map), their product over layers, min-max
    normalised. A region survives only where every layer agrees, which removes the noise of early
    layers while keeping their resolution."""
    fused = None
    for m in maps:
        m = m.clamp_min(0)
        m = m / m.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (m.ndim - 1)))
        fused = m if fused is None else fused * m
    if fused is None:
        raise MethodError("no maps to fuse")
    return normalize_maps(fused)


# ---------------------------------------------------------------------------
# aug_smooth
# ---------------------------------------------------------------------------
def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    squeeze = x.ndim == 3
    y = F.interpolate(x[:, None] if squeeze else x, size=size, mode="bilinear", align_corners=False)
    return y[:, 0] if squeeze else y


@dataclass(frozen=True)
class AugSmooth:
    """Test-time augmentation smoothing.

    Every combination of ``flips`` (``False`` = as is, ``True`` = mirrored left-right) and ``scales``
    (the input resized bilinearly to ``round(s·H) × round(s·W)``) is explained; each map is mapped
    back (mirrored again, resized to ``H × W``) and the maps are averaged:

        ``L = norm( 1/|T| Σ_t t⁻¹( L(t(x)) ) )``

    Defaults: no flip and a horizontal flip, at scales 0.9, 1 and 1.1 (6 passes).
    """

    flips: tuple[bool, ...] = (False, True)
    scales: tuple[float, ...] = (1.0, 0.9, 1.1)

    def __post_init__(self) -> None:
        if not self.flips or not self.scales:
            raise MethodError("aug_smooth needs at least one flip setting and one scale")
        if any(not (isinstance(s, (int, float)) and s > 0) for s in self.scales):
            raise MethodError(f"aug_smooth scales must be positive numbers, got {self.scales!r}")

    @property
    def transforms(self) -> list[tuple[bool, float]]:
        return [(f, float(s)) for s in self.scales for f in self.flips]

    def wrap(self, fn: MapFn) -> MapFn:
        def smoothed(x: Tensor, target: Callable[[Tensor], Tensor]) -> MethodMaps:
            size = (int(x.shape[-2]), int(x.shape[-1]))
            total: MethodMaps = {}
            for flip, scale in self.transforms:
                xs = _resize(x, (max(1, round(scale * size[0])), max(1, round(scale * size[1]))))
                if flip:
                    xs = xs.flip(-1)
                for method, layers in fn(xs, target).items():
                    acc = total.setdefault(method, {})
                    for layer, m in layers.items():
                        back = _resize(m.flip(-1) if flip else m, size)
                        acc[layer] = back if layer not in acc else acc[layer] + back
            n = len(self.transforms)
            return {meth: {layer: v / n for layer, v in layers.items()} for meth, layers in total.items()}

        return smoothed


def _option(value: object, cls: type, name: str) -> Any:
    """``True`` → ``cls()`` (the defaults), ``False``/``None`` → None, an instance of ``cls`` → itself."""
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if isinstance(value, cls):
        return value
    raise MethodError(f"{name} is True, False or a {cls.__name__}, got {type(value).__name__}")


def as_aug_smooth(value: bool | AugSmooth | None) -> AugSmooth | None:
    return _option(value, AugSmooth, "aug_smooth")  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# SESS
# ---------------------------------------------------------------------------
def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels with ``stride`` that cover ``length`` (the last
    window is flush with the end)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


@dataclass(frozen=True)
class SESS:
    """SESS: Saliency Enhancing with Scaling and Sliding (Tursun et al., ECCV 2022, arXiv 2207.01769).

    The input (``H × W``, the model's window) is resized by each factor of ``scales`` (≥ 1); on each
    scaled image, windows of ``H × W`` slide with a stride of ``stride · H`` (``· W``). Pre-filtering:
    every window is scored (the softmax probability of the explained class, or the target score for
    other targets) and, per sample, only the ``keep`` best-scoring fraction is explained (at least
    one window per scale; scale 1 is the image itself). Each kept window's map ``m_i`` (in [0, 1]) is
    placed on its scale's canvas and resized back to ``H × W``; the fusion is the confidence-weighted
    average over the windows that cover a pixel:

        ``L(p) = norm( Σ_i c_i m_i(p) / Σ_i c_i 1[p ∈ window_i] )``

    with ``c_i`` the window's score, shifted so that the lowest kept score of the sample is 0 + ε
    (class probabilities are used as they are).
    """

    scales: tuple[float, ...] = (1.0, 1.5, 2.0)
    stride: float = 0.5
    keep: float = 0.5

    def __post_init__(self) -> None:
        if not self.scales or any(not (isinstance(s, (int, float)) and s >= 1) for s in self.scales):
            raise MethodError(f"SESS scales must be numbers >= 1, got {self.scales!r}")
        if not 0 < self.stride <= 1:
            raise MethodError(f"SESS stride is a fraction of the window in (0, 1], got {self.stride!r}")
        if not 0 < self.keep <= 1:
            raise MethodError(f"SESS keep is a fraction in (0, 1], got {self.keep!r}")

    def wrap(
        self, fn: MapFn, confidence: Callable[[Tensor], Tensor]
    ) -> MapFn:
        """``confidence(x[N, C, H, W]) -> [N]`` scores windows for the pre-filter and the weights."""

        def fused(x: Tensor, target: Callable[[Tensor], Tensor]) -> MethodMaps:
            b = x.shape[0]
            h, w = int(x.shape[-2]), int(x.shape[-1])
            windows: list[tuple[float, int, int, Tensor]] = []  # (scale, top, left, crops)
            for s in self.scales:
                sh, sw = max(h, round(s * h)), max(w, round(s * w))
                xs = _resize(x, (sh, sw))
                for top in window_starts(sh, h, max(1, round(self.stride * h))):
                    for left in window_starts(sw, w, max(1, round(self.stride * w))):
                        windows.append((float(s), top, left, xs[..., top : top + h, left : left + w]))
            with torch.no_grad():
                conf = torch.stack([confidence(crop).float().cpu() for *_, crop in windows], 1)  # [B, n]
            selected = torch.zeros_like(conf, dtype=torch.bool)
            scale_of = torch.tensor([s for s, *_ in windows])
            for s in self.scales:  # the keep fraction per scale, at least one window
                cols = (scale_of == float(s)).nonzero().flatten()
                k = max(1, math.ceil(self.keep * cols.numel()))
                best = conf[:, cols].topk(k, dim=1).indices
                selected.scatter_(1, cols[best], True)
            masked = torch.where(selected, conf, torch.full_like(conf, math.inf))
            low = masked.amin(dim=1, keepdim=True)
            weight = torch.where(selected, conf - torch.clamp(low, max=0.0) + 1e-6, torch.zeros_like(conf))
            num: MethodMaps = {}
            den: Tensor | None = None
            for i, (s, top, left, crop) in enumerate(windows):
                if not bool(selected[:, i].any()):
                    continue
                sh, sw = max(h, round(s * h)), max(w, round(s * w))
                wi = weight[:, i].to(x.device)
                cover = torch.zeros(b, sh, sw, device=x.device)
                cover[:, top : top + h, left : left + w] = 1.0
                cover_back = _resize(cover, (h, w)) * wi.view(-1, 1, 1)
                den = cover_back if den is None else den + cover_back
                for method, layers in fn(crop, target).items():
                    acc = num.setdefault(method, {})
                    for layer, m in layers.items():
                        canvas = torch.zeros(b, sh, sw, device=x.device)
                        canvas[:, top : top + h, left : left + w] = m.float()
                        back = _resize(canvas, (h, w)) * wi.view(-1, 1, 1)
                        acc[layer] = back if layer not in acc else acc[layer] + back
            assert den is not None
            den = den.clamp_min(1e-12)
            return {meth: {layer: v / den for layer, v in layers.items()} for meth, layers in num.items()}

        return fused


def as_sess(value: bool | SESS | None) -> SESS | None:
    return _option(value, SESS, "sess")  # type: ignore[no-any-return]
