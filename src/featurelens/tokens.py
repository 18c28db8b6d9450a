"""Transformer outputs as feature maps: token sequences ``[B, N, C]`` → ``[B, C, H, W]``.

ViT-style layers output ``N = P + H·W`` tokens (``P`` prefix tokens: a class token, distillation or
register tokens), Swin-style layers ``N = H·W`` tokens or an ``[B, H, W, C]`` (channels-last) map.
CAM methods need ``[B, C, H, W]``; :func:`to_spatial` drops the prefix tokens and folds the rest
row-major into the grid. Activations and their gradients go through the same function, so
``∂y/∂A`` stays the gradient of the reshaped activation.

``reshape`` (the ``Explainer``'s argument) is one of:

* ``None`` (automatic): 4-D outputs are used as they are (channels-last when the model says so
  with ``output_fmt == "NHWC"``, as timm's Swin does); for ``[B, N, C]`` the prefix count is the
  model's ``num_prefix_tokens`` when it has one (timm), else 0 when ``N`` is a square and 1 when
  ``N − 1`` is; anything else is an error asking for an explicit ``reshape``;
* an int ``P``: that many prefix tokens, square grid;
* a pair ``(H, W)``: the grid, prefix ``P = N − H·W``;
* ``"nhwc"``: a channels-last ``[B, H, W, C]`` map;
* a callable ``t -> [B, C, H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from featurelens.errors import MethodError

ReshapeLike = int | tuple[int, int] | str | Callable[[Tensor], Tensor] | None


def _square(n: int) -> int | None:
    r = math.isqrt(n) if n > 0 else 0
    return r if r > 0 and r * r == n else None


def prefix_tokens(model: nn.Module | None, n_tokens: int, layer: str = "") -> tuple[int, int, int]:
    """Automatic ``(P, H, W)`` for ``n_tokens`` tokens (see the module docstring)."""
    known = getattr(model, "num_prefix_tokens", None)
    if isinstance(known, int) and not isinstance(known, bool):
        side = _square(n_tokens - known)
        if side is not None:
            return known, side, side
    for p in (0, 1):
        side = _square(n_tokens - p)
        if side is not None:
            return p, side, side
    raise MethodError(
        f"layer {layer!r} outputs {n_tokens} tokens, which is not a square grid with 0 or 1 class token; "
        "give reshape= (the number of prefix tokens, the (H, W) grid, or a function to [B, C, H, W])"
    )


def to_spatial(
    t: Tensor, reshape: ReshapeLike = None, *, model: nn.Module | None = None, layer: str = ""
) -> Tensor:
    """``t`` as ``[B, C, H, W]`` (see the module docstring); 4-D tensors pass through unless channels-last."""
    if callable(reshape) and not isinstance(reshape, str):
        out = reshape(t)
        if not isinstance(out, Tensor) or out.ndim != 4:
            raise MethodError(f"reshape= must return a [B, C, H, W] tensor, got {getattr(out, 'shape', out)!r}")
        return out
    if isinstance(reshape, str):
        if reshape.lower() not in ("nhwc", "bhwc"):
            raise MethodError(f"unknown reshape {reshape!r}; use 'nhwc', an int, (H, W) or a function")
        if t.ndim != 4:
            raise MethodError(f"reshape='nhwc' needs a 4-D [B, H, W, C] output at {layer!r}, got {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2)
    if t.ndim == 4:
        if reshape is None and getattr(model, "output_fmt", None) == "NHWC":
            return t.permute(0, 3, 1, 2)
        return t
    if t.ndim != 3:
        return t  # left to the methods' own shape check
    b, n, c = t.shape
    if reshape is None:
        p, h, w = prefix_tokens(model, n, layer)
    elif isinstance(reshape, bool):
        raise MethodError("reshape= is an int, (H, W), 'nhwc' or a function, not a bool")
    elif isinstance(reshape, int):
        side = _square(n - reshape) if n > reshape >= 0 else None
        if side is None:
            raise MethodError(f"{n} tokens minus {reshape} prefix tokens at {layer!r} is not a square grid")
        p, h, w = reshape, side, side
    elif isinstance(reshape, tuple) and len(reshape) == 2:
        h, w = int(reshape[0]), int(reshape[1])
        p = n - h * w
        if p < 0 or h < 1 or w < 1:
            raise MethodError(f"a {h}×{w} grid does not fit the {n} tokens of {layer!r}")
    else:
        raise MethodError(f"unknown reshape {reshape!r}; use an int, (H, W), 'nhwc' or a function")
    return t[:, p:, :].reshape(b, h, w, c).permute(0, 3, 1, 2)
