"""Localisation metrics against ground-truth boxes or masks.

* Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016,
  arXiv 1608.00507): a hit when the map's maximum lies inside the object (optionally within a
  ``tolerance`` of it; the paper uses 15 pixels). The maximum is the first in row-major order
  when several pixels tie. Accuracy = hits / samples.
* Energy-based pointing game (Wang et al., Score-CAM, CVPR-W 2020, arXiv 1910.01279): the share
  of the map's energy inside the object, ``Σ_{(i,j)∈bbox} L_ij / Σ_ij L_ij`` with ``L >= 0``.

Boxes are ``(x0, y0, x1, y1)`` in pixel coordinates of the map: ``x0, y0`` inclusive, ``x1, y1``
exclusive. A sample may have several boxes (their union counts). Masks are ``[B, H, W]`` booleans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from featurelens.metrics.scoring import MetricError

Box = Sequence[float]
BoxesLike = Tensor | Sequence[Box | Sequence[Box]]


def boxes_to_masks(boxes: BoxesLike, size: Sequence[int], batch: int | None = None) -> Tensor:
    """``[B, H, W]`` boolean masks from one box (or a list of boxes) per sample."""
    h, w = int(size[0]), int(size[1])
    if isinstance(boxes, Tensor):
        boxes = boxes.tolist()
    per_sample: list[list[Box]] = []
    for item in boxes:
        item = list(item)
        if item and not isinstance(item[0], (list, tuple)):
            per_sample.append([item])
        else:
            per_sample.append([list(b) for b in item])
    if batch is not None and len(per_sample) != batch:
        raise MetricError(
            f"{len(per_sample)} box entries for {batch} maps; give one box (or list of boxes) per sample"
        )
    masks = torch.zeros(len(per_sample), h, w, dtype=torch.bool)
    for i, sample_boxes in enumerate(per_sample):
        for box in sample_boxes:
            if len(box) != 4:
                raise MetricError(f"a box is (x0, y0, x1, y1), got {box!r}")
            x0, y0, x1, y1 = (round(float(v)) for v in box)
            x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
            y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
            if x1 <= x0 or y1 <= y0:
                raise MetricError(
                    f"box {box!r} is empty inside a {w}x{h} map (x1 > x0 and y1 > y0 are needed)"
                )
            masks[i, y0:y1, x0:x1] = True
    return masks


def _masks(maps: Tensor, boxes: BoxesLike | None, masks: Tensor | None) -> Tensor:
    if maps.ndim != 3:
        raise MetricError(f"maps must be [B, H, W], got shape {tuple(maps.shape)}")
    if (boxes is None) == (masks is None):
        raise MetricError("give either boxes or masks (exactly one)")
    if masks is None:
        assert boxes is not None
        return boxes_to_masks(boxes, maps.shape[-2:], maps.shape[0]).to(maps.device)
    if masks.shape != maps.shape:
        raise MetricError(f"masks {tuple(masks.shape)} must have the maps' shape {tuple(maps.shape)}")
    return masks.to(device=maps.device, dtype=torch.bool)


@dataclass
class PointingResult:
    hits: Tensor  # [B] bool
    peaks: Tensor  # [B, 2] (row, column) of each map's maximum

    @property
    def accuracy(self) -> float:
        return float(self.hits.float().mean())


def pointing_game(
    maps: Tensor, boxes: BoxesLike | None = None, masks: Tensor | None = None, *, tolerance: int = 0
) -> PointingResult:
    """Pointing game hits: is each map's maximum within ``tolerance`` pixels of the object?"""
    m = _masks(maps, boxes, masks)
    if tolerance > 0:
        k = 2 * tolerance + 1
        yy, xx = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        disc = ((yy - tolerance) ** 2 + (xx - tolerance) ** 2 <= tolerance**2).float().to(maps.device)
        grown = F.conv2d(m[:, None].float(), disc[None, None], padding=tolerance)[:, 0]
        m = grown > 0
    flat = torch.nan_to_num(maps.detach().float(), nan=float("-inf")).flatten(1)
    peak = flat.argmax(dim=1)  # first maximum in row-major order
    w = maps.shape[-1]
    hits = m.flatten(1).gather(1, peak[:, None]).squeeze(1)
    return PointingResult(hits=hits.cpu(), peaks=torch.stack([peak // w, peak % w], 1).cpu())


def energy_pointing_game(maps: Tensor, boxes: BoxesLike | None = None, masks: Tensor | None = None) -> Tensor:
    """``[B]`` share of each (non-negative) map's energy inside the object; 0 for an all-zero map."""
    m = _masks(maps, boxes, masks)
    energy = torch.nan_to_num(maps.detach().float()).clamp_min(0)
    total = energy.flatten(1).sum(1)
    inside = (energy * m).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total)).cpu()
