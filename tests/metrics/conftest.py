"""Fixtures for the metric tests."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor


@pytest.fixture
def region() -> Tensor:
    """A 16x16 region mask with a 6x5 box at rows 3..8, columns 7..11, weighted (so the order inside matters)."""
    r = torch.zeros(16, 16)
    r[3:9, 7:12] = 1.0
    return r


@pytest.fixture
def positive_inputs() -> Tensor:
    torch.manual_seed(3)
    return torch.rand(4, 3, 16, 16) + 0.5
