"""The explanation object and its helpers (overlay, save, comparison grid)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from featurelens.imaging import as_pil, normalize_maps, overlay, resize_maps


@dataclass
class Explanation:
    """Saliency maps of one method for a batch.

    Attributes:
        method: method name.
        layers: explained layer names, in order.
        maps: ``{layer: [B, H, W]}`` upsampled to the input size, each map min-max normalised to
            [0, 1] (a constant map is all zeros).
        raw_maps: ``{layer: [B, h, w]}`` at feature resolution, before normalisation.
        weights: ``{layer: [B, K] or None}`` channel weights (None for element-wise methods).
        scores: ``[B]`` target scores of the explained batch.
        target_indices: ``[B]`` explained class per sample, when the target is a class.
        fused: ``[B, H, W]`` fusion of several layers' maps (when asked), in [0, 1].
        meta: free-form extras (fusion rule, method options, ...).
    """

    method: str
    layers: list[str]
    maps: dict[str, Tensor]
    raw_maps: dict[str, Tensor]
    weights: dict[str, Tensor | None]
    scores: Tensor
    target_indices: Tensor | None = None
    fused: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def map(self) -> Tensor:
        """``[B, H, W]``: the fused map when layers were fused, else the first layer's map."""
        return self.fused if self.fused is not None else self.maps[self.layers[0]]

    @property
    def batch_size(self) -> int:
        return int(self.scores.shape[0])

    def cpu(self) -> Explanation:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().cpu()

        return Explanation(
            method=self.method,
            layers=list(self.layers),
            maps={k: mv(v) for k, v in self.maps.items()},  # type: ignore[misc]
            raw_maps={k: mv(v) for k, v in self.raw_maps.items()},  # type: ignore[misc]
            weights={k: mv(v) for k, v in self.weights.items()},
            scores=mv(self.scores),  # type: ignore[arg-type]
            target_indices=mv(self.target_indices),
            fused=mv(self.fused),
            meta=dict(self.meta),
        )

    def select(self, index: int, layer: str | None = None) -> Tensor:
        """One ``[H, W]`` map: sample ``index`` of ``layer`` (default: :attr:`map`)."""
        source = self.map if layer is None else self.maps[layer]
        return source[index]

    def map_at(self, index: int, size_hw: Sequence[int], layer: str | None = None) -> np.ndarray:
        """Sample ``index``'s map resized to ``size_hw`` (e.g. the original image), float32 in [0, 1]."""
        m = self.select(index, layer).detach().float().cpu()[None]
        return resize_maps(m, size_hw)[0].clamp(0, 1).numpy().astype(np.float32)

    def overlay(
        self,
        image: Image.Image | np.ndarray | str | Path,
        index: int = 0,
        layer: str | None = None,
        alpha: float = 0.5,
        colormap: str = "jet",
    ) -> np.ndarray:
        """The map of sample ``index`` blended over ``image`` (H×W×3 uint8, at the image's size)."""
        return overlay(image, self.select(index, layer).detach().cpu(), alpha=alpha, colormap=colormap)

    def save(
        self,
        out_dir: str | Path,
        images: Sequence[Image.Image | np.ndarray | str | Path],
        names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        alpha: float = 0.5,
        colormap: str = "jet",
    ) -> dict[str, Any]:
        """Write per sample an overlay PNG and the map as ``.npy`` (float32, at the image's own
        resolution, values in [0, 1]); write and return ``manifest.json`` listing every file."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if len(images) != self.batch_size:
            raise ValueError(f"{len(images)} images for an explanation of {self.batch_size}")
        names = list(names) if names is not None else [f"image{i:03d}" for i in range(self.batch_size)]
        entries = []
        for i, (image, name) in enumerate(zip(images, names)):
            pil = as_pil(image)
            m = self.map_at(i, (pil.height, pil.width))
            npy = out / f"{name}_{self.method}.npy"
            png = out / f"{name}_{self.method}.png"
            np.save(npy, m)
            Image.fromarray(overlay(pil, m, alpha=alpha, colormap=colormap)).save(png)
            idx = None if self.target_indices is None else int(self.target_indices[i])
            entries.append(
                {
                    "image": name,
                    "method": self.method,
                    "layers": self.layers,
                    "overlay": png.name,
                    "map": npy.name,
                    "target_index": idx,
                    "target_class": None if idx is None or class_names is None else class_names[idx],
                    "score": float(self.scores[i]),
                }
            )
        manifest = {"method": self.method, "layers": self.layers, "files": entries}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        return manifest


def finish_maps(raw: Tensor, size: Sequence[int]) -> Tensor:
    """Raw ``[B, h, w]`` maps → upsampled to ``size`` and normalised per sample to [0, 1]."""
    return normalize_maps(resize_maps(raw.float(), size))


def fuse_maps(maps: Sequence[Tensor], rule: str = "mean") -> Tensor:
    """Fuse per-layer maps ``[B, H, W]`` (each in [0, 1]) by ``mean``, ``max`` or ``product``; renormalised."""
    stack = torch.stack(list(maps))
    if rule == "mean":
        fused = stack.mean(0)
    elif rule == "max":
        fused = stack.max(0).values
    elif rule == "product":
        fused = stack.prod(0)
    else:
        raise ValueError(f"unknown fusion rule {rule!r}; use 'mean', 'max' or 'product'")
    return normalize_maps(fused)


def comparison_grid(
    images: Sequence[Image.Image | np.ndarray | str | Path],
    explanations: Mapping[str, Explanation],
    row_labels: Sequence[str] | None = None,
    cell: int = 192,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Image.Image:
    """A grid image: one row per image (original first), one column per method."""
    methods = list(explanations)
    n_rows, n_cols = len(images), len(methods) + 1
    pad, header = 4, 18
    label_w = 0 if row_labels is None else 110
    width = label_w + n_cols * (cell + pad) + pad
    height = header + n_rows * (cell + pad) + pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(["image", *methods]):
        draw.text((label_w + pad + j * (cell + pad) + 4, 3), title, fill="black")
    for i, image in enumerate(images):
        pil = as_pil(image)
        y = header + pad + i * (cell + pad)
        if row_labels is not None:
            draw.text((4, y + cell // 2 - 6), str(row_labels[i])[:18], fill="black")
        tiles = [pil] + [
            Image.fromarray(explanations[m].overlay(pil, i, alpha=alpha, colormap=colormap)) for m in methods
        ]
        for j, tile in enumerate(tiles):
            grid.paste(tile.resize((cell, cell), Image.BILINEAR), (label_w + pad + j * (cell + pad), y))
    return grid
