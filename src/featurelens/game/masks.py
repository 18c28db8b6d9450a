"""Top-q % soft-edged reveal masks.

For a cluster map ``M`` at image resolution (H×W, values in [0, 1]) and a reveal fraction ``q``:

1. the hard mask ``B_q`` marks exactly ``k = round(q/100 · H·W)`` pixels, those with the largest
   ``M`` (ties are broken by a stable order, so ``min M[B_q] >= max M[~B_q]``);
2. the soft mask is ``S_q = clip(2 · (G_σ * B_q), 0, 1)`` with a Gaussian blur ``G_σ``,
   ``σ = edge · min(H, W)``: inside the region and on its border ``S_q ≈ 1``, outside it fades to 0
   within about 2σ, so the revealed blob has a feathered edge instead of jagged pixels;
3. the player sees ``photo · S_q`` (black elsewhere).

The reveal steps follow the paper's schedule ``q = 2, 4.5, 8, 13, 20, 30 %`` (:data:`REVEAL_Q`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

#: percent of the image revealed at each step (0-based step index)
REVEAL_Q: tuple[float, ...] = (2.0, 4.5, 8.0, 13.0, 20.0, 30.0)


def top_q_mask(image_map: np.ndarray, q: float) -> np.ndarray:
    """Boolean mask of exactly ``round(q/100·N)`` pixels with the largest map values."""
    m = np.asarray(image_map, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {m.shape}")
    if not 0 < q <= 100:
        raise ValueError(f"q must be in (0, 100], got {q}")
    n = m.size
    k = max(1, round(q / 100.0 * n))
    flat = m.ravel()
    # stable descending order: larger values first, ties by pixel index
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(m.shape)


def soft_mask(image_map: np.ndarray, q: float, edge: float = 0.012) -> np.ndarray:
    """``clip(2 · blur(top_q_mask), 0, 1)`` as float32 (see the module docstring)."""
    hard = top_q_mask(image_map, q).astype(np.float32)
    sigma = max(0.5, edge * min(hard.shape))
    return np.clip(2.0 * gaussian_filter(hard, sigma=sigma, mode="constant"), 0.0, 1.0).astype(np.float32)


def reveal(photo: np.ndarray, image_map: np.ndarray, q: float, edge: float = 0.012) -> np.ndarray:
    """The photo (H×W×3 uint8) blacked out except the soft top-q % region of ``image_map``."""
    photo = np.asarray(photo)
    if photo.shape[:2] != image_map.shape:
        image_map = np.asarray(
            Image.fromarray((np.clip(image_map, 0, 1) * 255).astype(np.uint8)).resize(
                (photo.shape[1], photo.shape[0]), Image.BILINEAR
            ),
            dtype=np.float32,
        ) / 255.0
    s = soft_mask(image_map, q, edge)
    return (photo.astype(np.float32) * s[..., None] + 0.5).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def reveal_series(photo: np.ndarray, image_map: np.ndarray, qs: tuple[float, ...] = REVEAL_Q) -> list[bytes]:
    """JPEG bytes of every reveal step."""
    return [encode_jpeg(reveal(photo, image_map, q)) for q in qs]
