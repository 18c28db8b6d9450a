"""A small metric-learning CNN trained on animal-shape-mnist (``shapes_metric``).

Architecture (``ShapesMetricNet``)::

    x [B, 1, 28, 28] (grayscale, (x/255 - 0.5) / 0.5)
    features.0  conv 3×3 (1→32)  + BN + ReLU → max-pool 2      → [B, 32, 14, 14]
    features.1  conv 3×3 (32→64) + BN + ReLU → max-pool 2      → [B, 64, 7, 7]
    features.2  conv 3×3 (64→128) + BN + ReLU                  → [B, 128, 7, 7]   (feature layer A)
    pool        global average pooling                        → f [B, 128]
    proj        Linear(128, 64)                                → z [B, 64]
    output      z / ‖z‖                                        → e [B, 64]

It was trained with a triplet margin loss (margin 0.2, cosine distance) and a semi-hard miner
(``scripts/train_metric_model.py``); the committed state dict ``weights/shapes_metric.pt`` is
loaded with ``torch.load(weights_only=True)``. The dataset is read from the ``animal-shape-mnist``
package with a restricted unpickler (only numpy array reconstruction is allowed).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from featurelens.errors import ModelError

WEIGHTS = Path(__file__).with_name("weights") / "shapes_metric.pt"
SHAPES_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
INPUT_SIZE = (28, 28)


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ShapesMetricNet(nn.Module):
    """3 conv+BN blocks → GAP → Linear(128, 64) → L2 normalisation (see the module docstring)."""

    def __init__(self, embedding_dim: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(_block(1, 32, True), _block(32, 64, True), _block(64, 128, False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.proj = nn.Linear(128, embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        z = self.proj(self.flatten(self.pool(self.features(x))))
        return nn.functional.normalize(z, dim=1)


def preprocess_shapes(images: list[Image.Image]) -> Tensor:
    """PIL images → ``[B, 1, 28, 28]``: grayscale, resized to 28×28, scaled to [-1, 1]."""
    arrays = [
        np.asarray(im.convert("L").resize((INPUT_SIZE[1], INPUT_SIZE[0]), Image.BILINEAR), dtype=np.float32)
        for im in images
    ]
    batch = torch.from_numpy(np.stack(arrays))[:, None] / 255.0
    return (batch - 0.5) / 0.5


def load_shapes_metric(path: str | Path = WEIGHTS) -> ShapesMetricNet:
    """The trained network in eval mode (state dict loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: shapes_metric weights not found; run scripts/train_metric_model.py")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = ShapesMetricNet()
    net.load_state_dict(state)
    return net.eval()


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the dataset pickle")
        return super().find_class(module, name)


def load_shapes_dataset() -> tuple[np.ndarray, np.ndarray]:
    """animal-shape-mnist 0.39: ``X`` uint8 [10000, 28, 28] and labels int64 [10000] (0..9)."""
    spec = importlib.util.find_spec("animal_shape_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the animal-shape-mnist package is not installed (`pip install featurelens[metric]`)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal Shape"
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(root / name, "rb") as fh:
            arrays.append(np.asarray(_NumpyOnlyUnpickler(fh).load()))
    x, y = arrays
    return x.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64).reshape(-1)


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random train/held-out split of ``n`` samples."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def to_tensor(x: np.ndarray) -> Tensor:
    """uint8 [N, 28, 28] → model input [N, 1, 28, 28] (same scaling as :func:`preprocess_shapes`)."""
    return (torch.from_numpy(x.astype(np.float32))[:, None] / 255.0 - 0.5) / 0.5
