"""Finer-CAM: explain a class against its most similar classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from featurelens.errors import MethodError
from featurelens.methods.base import LayerState, Method, MethodContext, get_method, register, require_spatial


@register
class FinerCAM(Method):
    """Finer-CAM (Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual
    Explanation", CVPR 2025, arXiv 2501.11309).

    The explained class ``c`` is compared with the classes whose logits are closest to its own,
    ``j ∈ S`` (by ``|y_j − y_c|``, ranks ``comparisons`` = 1, 2, 3 by default; rank 0 is ``c``), each
    weighted by its probability ``p_j = softmax(y)_j``:

        ``s = Σ_{j∈S} p_j · (y_c − α · y_j) / Σ_{j∈S} p_j``

    and a gradient method (``base``, default Grad-CAM) explains ``s`` instead of ``y_c``: regions
    that tell ``c`` apart from its look-alikes. ``S`` is fixed from the clean output; ``s`` (the
    ``p_j`` included) is differentiated. ``α = 0`` gives the base method on the probability-weighted
    logit. One extra forward and backward pass.
    """

    name = "finercam"
    aliases = ("finer-cam",)
    needs_gradients = False  # its own backward pass of the comparison score
    reference = "Zhang et al., Finer-CAM, CVPR 2025"

    def __init__(self, alpha: float = 1.0, comparisons: Sequence[int] = (1, 2, 3), base: str = "gradcam") -> None:
        ranks = list(comparisons)
        if not ranks or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in ranks):
            raise MethodError(f"Finer-CAM comparisons are ranks ≥ 1 of similar classes, got {comparisons!r}")
        self.alpha, self.ranks = float(alpha), ranks
        self.base = get_method(base)
        if not self.base.needs_gradients:
            raise MethodError(f"Finer-CAM needs a gradient method as its base, not {base!r}")

    def __repr__(self) -> str:
        return f"FinerCAM(alpha={self.alpha}, comparisons={self.ranks}, base={self.base.name!r})"

    def similar_classes(self, output: Tensor, classes: Tensor) -> Tensor:
        """``[B, |S|]``: the classes at the given ranks of ``|y_j − y_c|`` (``c`` itself is rank 0)."""
        gap = (output - output.gather(1, classes[:, None])).abs()
        gap.scatter_(1, classes[:, None], -1.0)  # c first even if another class ties with it
        order = gap.argsort(dim=1, stable=True)
        ranks = [r for r in self.ranks if r < output.shape[1]]
        if not ranks:
            raise MethodError(f"Finer-CAM: the model has {output.shape[1]} classes, too few to compare")
        return order[:, ranks]

    def score(self, out: Tensor, classes: Tensor, similar: Tensor) -> Tensor:
        p = torch.softmax(out, dim=1).gather(1, similar)
        diff = out.gather(1, classes[:, None]) - self.alpha * out.gather(1, similar)
        return (p * diff).sum(dim=1) / p.sum(dim=1)

    def __call__(self, layer: LayerState, ctx: MethodContext) -> tuple[Tensor, Tensor | None]:
        from featurelens.engine import Capture

        if ctx.target_indices is None:
            raise MethodError("Finer-CAM explains a class: use a class target (an index, a list, or the predicted class)")
        classes = ctx.target_indices.to(ctx.output.device)
        similar = self.similar_classes(ctx.output.float(), classes)
        with Capture(ctx.model, layer.name) as cap:
            out = cap.forward(ctx.inputs)
            with torch.enable_grad():
                scores = self.score(out, classes, similar)
            g = require_spatial(cap.gradients(scores)[layer.name][-1], "Finer-CAM", layer.name)
        return self.base(LayerState(layer.name, layer.activation, g.to(layer.activation.dtype)), ctx)
