"""FEM: the feature explanation method (gradient-free)."""

from __future__ import annotations

from torch import Tensor

from featurelens.errors import MethodError
from featurelens.methods.base import LayerState, Method, MethodContext, register


@register
class FEM(Method):
    """FEM (Fuad et al., "Features understanding in 3D CNNs for actions recognition in video",
    IPTA 2020, hal-02963298).

    Gradient-free and class-agnostic. Each channel keeps the share of its positions where it is
    exceptionally strong, by the ``k``-sigma rule on its own spatial statistics
    (``μ_k``, ``σ_k`` the mean and population standard deviation of ``A_k``):

        ``w_k = 1/(h·w) Σ_ij [A_k[i, j] > μ_k + k·σ_k]``;  ``L = ReLU(Σ_k w_k A_k)``

    Args:
        k: the number of standard deviations (default 2).
    """

    name = "fem"
    aliases = ("feature-explanation-method",)
    needs_gradients = False
    reference = "Fuad et al., Features understanding in 3D CNNs for actions recognition in video, IPTA 2020"

    def __init__(self, k: float = 2.0) -> None:
        if not isinstance(k, (int, float)) or isinstance(k, bool):
            raise MethodError(f"FEM k must be a number, got {k!r}")
        self.k = float(k)

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        a = layer.activation
        mean = a.mean(dim=(2, 3), keepdim=True)
        std = a.std(dim=(2, 3), keepdim=True, unbiased=False)
        return (a > mean + self.k * std).to(a.dtype).mean(dim=(2, 3))

    def __repr__(self) -> str:
        return f"FEM(k={self.k})"
