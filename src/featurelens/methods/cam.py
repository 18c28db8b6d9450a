"""CAM: class activation mapping from the classifier's FC weights (no gradient)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from featurelens.errors import MethodError
from featurelens.methods.base import LayerState, Method, MethodContext, register


@register
class CAM(Method):
    """CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, arXiv 1512.04150).

    For a network ``A → global average pooling → FC(W, b)``, the class score is
    ``y_c = Σ_k W[c, k] · mean_ij A_k[i, j] + b_c``; the map of class ``c`` is

        ``w_k = W[c, k]``;  ``L = ReLU(Σ_k w_k A_k)``

    The FC layer is found by :func:`featurelens.models.find_classifier` (the last ``nn.Linear``
    whose input size equals the layer's channel count), or named with ``fc="name"``. No gradient
    is computed. A model without such a layer raises :class:`NoClassifierHeadError`.
    """

    name = "cam"
    aliases = ("classic-cam",)
    needs_gradients: ClassVar[bool] = False
    reference = "Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016"

    def __init__(self, fc: str | None = None) -> None:
        self.fc = fc

    def weights(self, layer: LayerState, ctx: MethodContext) -> Tensor:
        from torch import nn

        from featurelens.engine import resolve_layer
        from featurelens.errors import NoClassifierHeadError
        from featurelens.models import find_classifier

        channels = layer.activation.shape[1]
        if self.fc is not None:
            _, linear = resolve_layer(ctx.model, self.fc)
            if not isinstance(linear, nn.Linear) or linear.in_features != channels:
                raise NoClassifierHeadError(
                    f"CAM: layer {self.fc!r} is not an nn.Linear on {channels} pooled channels of {layer.name!r}"
                )
        else:
            _, linear = find_classifier(ctx.model, channels)
        if ctx.target_indices is None:
            raise MethodError(
                "CAM explains a class: use a class target (an index, a list, or the predicted class)"
            )
        idx = ctx.target_indices.to(linear.weight.device)
        if int(idx.max()) >= linear.out_features:
            raise NoClassifierHeadError(
                f"CAM: target class {int(idx.max())} is beyond the {linear.out_features} outputs of the FC layer"
            )
        return linear.weight.detach()[idx].to(layer.activation.device)
