"""Reference maps that give every results table a floor.

* :func:`random_maps` – uniform noise on a coarse ``cells × cells`` grid, upsampled bilinearly to the
  image (the resolution of a CAM on a 7×7 feature map), seeded;
* :func:`centre_gaussian_maps` – ``exp(−((x − c_x)² + (y − c_y)²) / (2σ²))`` with ``σ = sigma · min(H, W)``:
  the photographer's centre bias, which any method must beat to show it uses the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from featurelens.metrics.scoring import MetricError


def random_maps(
    batch: int, size: tuple[int, int], *, cells: int = 7, seed: int = 0, device: torch.device | str = "cpu"
) -> Tensor:
    """``[B, H, W]`` seeded random maps in [0, 1] (noise on a ``cells × cells`` grid, upsampled)."""
    if cells < 1:
        raise MetricError(f"cells must be positive, got {cells}")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, cells, cells, generator=g)
    up = F.interpolate(coarse, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return up.to(device)


def centre_gaussian_maps(
    batch: int, size: tuple[int, int], *, sigma: float = 0.25, device: torch.device | str = "cpu"
) -> Tensor:
    """``[B, H, W]`` isotropic Gaussians centred on the image, peak 1, ``σ = sigma · min(H, W)``."""
    h, w = int(size[0]), int(size[1])
    s = sigma * min(h, w)
    y = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    x = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    g = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * s * s))
    return g.expand(batch, h, w).clone().to(device)


BASELINE_MAPS = {"random": random_maps, "centre": centre_gaussian_maps}
