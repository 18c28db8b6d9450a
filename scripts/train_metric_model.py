#!/usr/bin/env python
"""Train the ``shapes_metric`` embedding model on animal-shape-mnist and report held-out Recall@1.

Recipe: 3 conv+BN blocks → GAP → Linear(128, 64) → L2 norm (``featurelens.models.metric_shapes``),
TripletMarginLoss(margin=0.2, cosine distance) with a semi-hard triplet miner
(pytorch-metric-learning), Adam 1e-3, batch 128, a fixed number of epochs, everything seeded.
The held-out set is a fixed 20 % split (``split_indices(seed=0)``); Recall@1 is leave-one-out
nearest-neighbour retrieval (cosine) inside the held-out set.

    .venv/bin/python scripts/train_metric_model.py                 # trains, writes the checkpoint
    .venv/bin/python scripts/train_metric_model.py --evaluate-only # Recall@1 of the committed weights
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from featurelens.models.metric_shapes import (
    WEIGHTS,
    ShapesMetricNet,
    load_shapes_dataset,
    load_shapes_metric,
    split_indices,
    to_tensor,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@torch.no_grad()
def embed(net: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    net.eval()
    return torch.cat([net(x[i : i + batch]) for i in range(0, len(x), batch)])


def recall_at_1(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out Recall@1 with cosine similarity."""
    e = torch.nn.functional.normalize(emb, dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    nn_index = sim.argmax(dim=1)
    return float((labels[nn_index] == labels).float().mean())


def train(epochs: int, seed: int, out: Path) -> dict[str, float]:
    from pytorch_metric_learning import distances, losses, miners

    seed_everything(seed)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    x, y = load_shapes_dataset()
    tr, te = split_indices(len(y), 0.2, seed=0)
    xtr, ytr = to_tensor(x[tr]), torch.from_numpy(y[tr])
    xte, yte = to_tensor(x[te]), torch.from_numpy(y[te])
    net = ShapesMetricNet()
    r1_untrained = recall_at_1(embed(net, xte), yte)
    dist = distances.CosineSimilarity()
    loss_fn = losses.TripletMarginLoss(margin=0.2, distance=dist)
    miner = miners.TripletMarginMiner(margin=0.2, distance=dist, type_of_triplets="semihard")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(ytr), generator=gen)
        total = 0.0
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            xb = xtr[idx]
            # light augmentation: random shifts of up to 2 pixels
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            emb = net(xb)
            loss = loss_fn(emb, ytr[idx], miner(emb, ytr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        r1 = recall_at_1(embed(net, xte), yte)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(ytr):.4f}  held-out Recall@1 {r1:.4f}  ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, out)
    return {
        "recall_at_1": recall_at_1(embed(net, xte), yte),
        "recall_at_1_untrained": r1_untrained,
        "train_seconds": time.perf_counter() - t0,
        "epochs": epochs,
        "held_out": len(te),
        "checkpoint_bytes": out.stat().st_size,
    }


def evaluate(path: Path) -> dict[str, float]:
    x, y = load_shapes_dataset()
    _, te = split_indices(len(y), 0.2, seed=0)
    net = load_shapes_metric(path)
    return {"recall_at_1": recall_at_1(embed(net, to_tensor(x[te])), torch.from_numpy(y[te])), "held_out": len(te)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--evaluate-only", action="store_true")
    args = parser.parse_args()
    result = evaluate(args.out) if args.evaluate_only else train(args.epochs, args.seed, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
