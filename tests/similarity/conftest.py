"""Fixtures of the similarity tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def pair_inputs():
    torch.manual_seed(7)
    return torch.randn(3, 3, 10, 12), torch.randn(3, 3, 10, 12)


@pytest.fixture(scope="session")
def lite0_embedder(lite0):
    from featurelens.similarity.embedding import _lite0

    return _lite0(lite0)


@pytest.fixture(scope="session")
def shapes_embedder():
    from featurelens.similarity.embedding import load_embedder

    return load_embedder("shapes_metric")


@pytest.fixture(scope="session")
def shapes_data():
    """Held-out animal-shape-mnist images (uint8 [N, 28, 28]) and labels."""
    from featurelens.models.metric_shapes import load_shapes_dataset, split_indices

    x, y = load_shapes_dataset()
    _, te = split_indices(len(y), 0.2, seed=0)
    return x[te], y[te]
