"""Constructed models for the metric tests (known answers)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RegionMean(nn.Module):
    """Output ``[N, 2]``: logit 0 is the mean of channel 0 inside a known region, logit 1 is zero."""

    def __init__(self, region: Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x: Tensor) -> Tensor:
        inside = (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        return torch.stack([inside, torch.zeros_like(inside)], dim=1)


class CountingModel(nn.Module):
    """Wraps a model and counts its forward calls and rows."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x)
