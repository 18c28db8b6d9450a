"""Score-CAM, exact and fast (top-N channels), chunked so that peak memory is bounded."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurelens.errors import MethodError
from featurelens.methods.base import LayerState, Method, MethodContext, channels_last, register

Selection = Literal["variance", "activation", "gradient"]

#: channels scored by the fast mode (``fast=True``); chosen from ``benchmarks/bench_cam.py``
DEFAULT_TOP_N = 48


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the extra forwards (batch norm must not mix masked copies); restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def channel_masks(activation: Tensor, size: tuple[int, int]) -> Tensor:
    """``[n, h, w]`` activation maps → ``[n, H, W]`` masks: bilinear upsampling to ``size`` then
    min-max normalisation of each mask to [0, 1] (a constant channel gives an all-zero mask)."""
    up = F.interpolate(activation[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = up.view(up.shape[0], -1)  # normalised in place: no full-size temporaries
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    flat.sub_(lo).div_(span.clamp_min(1e-12)).mul_(span > 1e-12)
    return up


@register
class ScoreCAM(Method):
    """Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for CNNs", CVPR-W 2020,
    arXiv 1910.01279).

    Each channel ``A_k`` becomes a mask ``M_k = norm(up(A_k))`` (bilinear upsampling to the input
    size, min-max normalised to [0, 1]); the channel's weight is the softmax probability of the
    explained class ``c`` (fixed per sample) on the masked input:

        ``w_k = softmax(f(X ⊙ M_k))_c``;  ``L = ReLU(Σ_k w_k A_k)``

    No gradient is used. For a custom target callable without class indices, ``w_k`` is the
    target's own score of the masked input's output.

    Args:
        batch_size: masked copies per forward pass (default 16); peak memory grows with it, not with
            ``K``. On CPU, 16 is as fast per image as 32 or 64 and needs about half the memory of 32.
        top_n: fast mode: score only the ``top_n`` channels ranked by ``select``; the other
            channels get weight 0. ``None`` (default) scores every channel (exact Score-CAM).
        fast: shorthand for ``top_n=DEFAULT_TOP_N`` when ``top_n`` is not given.
        select: how the fast mode ranks channels. ``"variance"`` (default): spatial variance of
            ``A_k``: a channel that is nearly constant only shifts the map, which the min-max
            normalisation removes, so the map's shape comes from high-variance channels;
            ``"activation"``: activation mass ``Σ_ij A_k[i, j]``; ``"gradient"``: the Grad-CAM weight
            ``mean_ij ∂y/∂A_k[i, j]`` (needs a backward pass). On EfficientNet-Lite0 (``head``, 1280
            channels) ``"variance"`` with ``top_n=48`` gave the best speed/fidelity trade-off
            (``benchmarks/bench_cam.py``).

        channels_last: run the masked forwards in channels-last memory format (same values, about
            1.3-2x less CPU on EfficientNet-Lite0); the model's tensors are restored afterwards.

    All channels whose activation is constant share one all-zero mask; its score is computed once.
    With class targets the masked inputs of all images are batched together (chunks of ``batch_size``).
    """

    name = "scorecam"
    aliases = ("score-cam",)
    needs_gradients = False
    reference = "Wang et al., Score-CAM, CVPR Workshops 2020"

    fast_options: ClassVar[dict[str, Any]] = {"fast": True}

    def __init__(
        self,
        batch_size: int = 16,
        top_n: int | None = None,
        select: Selection = "variance",
        fast: bool = False,
        channels_last: bool = True,
    ) -> None:
        if fast and top_n is None:
            top_n = DEFAULT_TOP_N
        if not isinstance(batch_size, int) or batch_size < 1:
            raise MethodError(f"Score-CAM batch_size must be a positive integer, got {batch_size!r}")
        if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
            raise MethodError(f"Score-CAM top_n must be a positive integer or None, got {top_n!r}")
        if select not in ("variance", "activation", "gradient"):
            raise MethodError(
                f"Score-CAM select must be 'variance', 'activation' or 'gradient', got {select!r}"
            )
        self.batch_size = batch_size
        self.top_n = top_n
        self.select = select
        self.channels_last = bool(channels_last)
        # instance attribute: the Explainer asks for gradients only when the ranking needs them
        self.needs_gradients = top_n is not None and select == "gradient"  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ScoreCAM(batch_size={self.batch_size}, top_n={self.top_n}, select={self.select!r})"

    def selected_channels(self, layer: LayerState) -> Tensor:
        """``[B, N]`` indices of the channels to score (all ``K`` in exact mode)."""
        a = layer.activation
        batch, k = a.shape[:2]
        if self.top_n is None or self.top_n >= k:
            return torch.arange(k, device=a.device).expand(batch, k)
        if self.select == "gradient":
            if layer.gradient is None:
                raise MethodError("Score-CAM with select='gradient' needs the layer's gradient")
            rank = layer.gradient.mean(dim=(2, 3))
        elif self.select == "activation":
            rank = a.sum(dim=(2, 3))
        else:
            rank = a.flatten(2).float().var(dim=2, unbiased=False)
        return rank.topk(self.top_n, dim=1).indices

    def _scores(self, out: Tensor, cls: Tensor | None, ctx: MethodContext) -> Tensor:
        """Row ``i``'s score: ``softmax(out_i)[cls_i]``, or the target's own score (one image's rows)."""
        if cls is not None:
            return torch.softmax(out.float(), dim=1).gather(1, cls[:, None])[:, 0]
        from featurelens.targets import evaluate_target

        return evaluate_target(ctx.target, out, out.shape[0]).float()

    #: masked inputs per (image, mask): SS-CAM's noise draws, IS-CAM's path steps; Score-CAM has one
    def num_variants(self) -> int:
        return 1

    def variant_images(self, x: Tensor, masks: Tensor, variant: Tensor) -> Tensor:
        """Model inputs ``[n, C, H, W]`` for images ``x`` ``[n, C, H, W]`` under masks ``[n, H, W]``,
        variant ``variant[i]`` of row ``i``: Score-CAM's ``X ⊙ M``. SS-CAM and IS-CAM override this."""
        return x * masks[:, None]

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        a = layer.activation
        x = ctx.inputs
        if x.shape[0] != a.shape[0]:
            raise MethodError(f"Score-CAM: {x.shape[0]} inputs for {a.shape[0]} activations")
        size = (int(x.shape[-2]), int(x.shape[-1]))
        batch, k = a.shape[:2]
        chosen = self.selected_channels(layer)
        # jobs (image b, channel c): every chosen channel that varies; channel k stands for the one
        # all-zero mask of an image's constant chosen channels (its score is computed once for all)
        jobs: list[list[int]] = []
        constant: dict[int, Tensor] = {}
        for b in range(batch):
            chans = chosen[b]
            flat = a[b, chans].flatten(1)
            still = flat.amax(dim=1) == flat.amin(dim=1)
            jobs.append(chans[~still].tolist())
            if bool(still.any()):
                constant[b] = chans[still]
                jobs[b].append(k)
        # pairs (image, channel, variant), image by image; with class indices a chunk of ``batch_size``
        # masked inputs may span images (fewer, fuller forwards); a custom target sees one image per chunk
        n_var = self.num_variants()
        pairs = [(b, c, v) for b in range(batch) for v in range(n_var) for c in jobs[b]]
        pb, pc, pv = (torch.tensor([p[i] for p in pairs], dtype=torch.long, device=a.device) for i in range(3))
        cls = None if ctx.target_indices is None else ctx.target_indices.to(a.device).long()
        bounds = [*range(0, len(pairs), self.batch_size), len(pairs)]
        if cls is None:  # split the chunks at image boundaries
            firsts = [i for i in range(len(pairs)) if i == 0 or pairs[i][0] != pairs[i - 1][0]]
            bounds = sorted({*bounds, *firsts})
        padded = torch.cat([a, a.new_zeros(batch, 1, *a.shape[2:])], dim=1)  # channel k: all-zero map
        total = torch.zeros(batch, k + 1, device=a.device, dtype=torch.float32)
        fast_format = self.channels_last and x.ndim == 4
        with _eval_mode(ctx.model), torch.no_grad(), channels_last(ctx.model, fast_format) as fmt:
            for s, e in itertools.pairwise(bounds):
                b, c, v = pb[s:e], pc[s:e], pv[s:e]
                masks = channel_masks(padded[b, c], size).to(x.dtype)
                out = ctx.model(self.variant_images(x[b], masks, v).contiguous(memory_format=fmt))
                scores = self._scores(out, cls[b] if cls is not None else None, ctx)
                total.index_put_((b, c), scores.float() / n_var, accumulate=True)
        weights = total[:, :k].clone()
        for b, chans in constant.items():
            weights[b, chans] = total[b, k]
        return weights
