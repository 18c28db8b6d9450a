"""Tiny embedding models for the similarity tests (imported by the tests and conftest)."""

from __future__ import annotations

import torch
from torch import nn

from featurelens.similarity.embedding import Embedder, EmbeddingHead


class TinyEmbed(nn.Module):
    """conv(3→4) → ReLU → conv(4→K) → ReLU (= A) → head."""

    def __init__(self, k: int = 6, head: EmbeddingHead | None = None, dead: int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, k, 3, padding=1)
        self.act1 = nn.ReLU()
        self.act = nn.ReLU()
        self.head = head if head is not None else EmbeddingHead("avg")
        if dead is not None:  # channel `dead` is zero for every input
            with torch.no_grad():
                self.conv2.weight[dead] = 0
                self.conv2.bias[dead] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv2(self.act1(self.conv1(x)))))


def make_head(kind: str, k: int = 6, d: int = 5) -> EmbeddingHead:
    torch.manual_seed(3)
    if kind == "gap":
        return EmbeddingHead("avg")
    if kind == "gap_l2":
        return EmbeddingHead("avg", normalize=True)
    if kind == "linear":
        return EmbeddingHead("avg", projection=nn.Linear(k, d))
    if kind == "linear_l2":
        return EmbeddingHead("avg", projection=nn.Linear(k, d), normalize=True)
    if kind == "gem":
        return EmbeddingHead("gem", p=3.0)
    if kind == "max":
        return EmbeddingHead("max")
    raise ValueError(kind)


HEADS = ["gap", "gap_l2", "linear", "linear_l2", "gem", "max"]


def tiny_embedder(kind: str = "gap", k: int = 6, dead: int | None = None, seed: int = 0) -> Embedder:
    head = make_head(kind, k)
    torch.manual_seed(seed)
    net = TinyEmbed(k, head, dead).eval()
    return Embedder(f"tiny-{kind}", net, "act", head, preprocess=_pre, input_size=(10, 12))


def _pre(images):
    import numpy as np

    arr = np.stack([np.asarray(im.convert("RGB").resize((12, 10)), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


