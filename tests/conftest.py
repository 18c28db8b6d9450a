"""Shared fixtures: the real pretrained model, real photos, and tiny CNNs for reference tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
from torch import nn


@pytest.fixture(scope="session")
def lite0():
    """The embedded default model (EfficientNet-Lite0, ImageNet, offline) as a ModelSpec."""
    from featurelens.models import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def photos():
    """Real photos bundled with scikit-image: name -> RGB PIL image."""
    from featurelens.imaging import sample_images

    return sample_images(["coffee", "chelsea", "astronaut", "rocket"])


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory, photos):
    """The sample photos written as JPEG/PNG files."""
    d = tmp_path_factory.mktemp("photos")
    for i, (name, im) in enumerate(photos.items()):
        im.save(d / (f"{name}.jpg" if i % 2 == 0 else f"{name}.png"))
    return d


class TinyCNN(nn.Module):
    """conv(3→6) → ReLU → conv(6→8) → ReLU → GAP → FC(8→5). Small enough for explicit formulas."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))))


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def tiny_input():
    torch.manual_seed(1)
    return torch.randn(3, 3, 10, 12)


# ---------------------------------------------------------------------------
# Playwright (browser tests of the game and of the bundle viewer): Debian's Chromium,
# never `playwright install`
# ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {
        **browser_type_launch_args,
        "executable_path": "/usr/bin/chromium",
        "args": ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"],
    }
