"""Image loading and conversion, map resizing, colormaps and overlays.

Everything a user hands us as an image goes through :func:`load_image`, which turns every failure
(missing file, not an image, truncated file, absurd size) into an :class:`ImageLoadError` with the
file name in the message, and converts grayscale, palette, 16-bit and RGBA images to 8-bit RGB.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from featurelens.errors import FeaturelensError, ImageLoadError

#: Images with more pixels than this are rejected (Pillow's own bomb check fires at 2x its limit).
MAX_PIXELS = 100_000_000

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an 8-bit RGB PIL image, or raise :class:`ImageLoadError`.

    Grayscale/palette/16-bit images are converted; transparency is composited over white;
    the EXIF orientation is applied. Images above ``max_pixels`` are rejected before decoding.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a folder, not an image")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageLoadError(
                    f"{path}: image is {w}x{h} ({w * h / 1e6:.0f} MP), above the limit of {max_pixels / 1e6:.0f} MP"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
                im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (or an unsupported format)") from None
    except Image.DecompressionBombError:
        raise ImageLoadError(f"{path}: image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: cannot read image ({exc})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB; alpha is composited over white."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def as_pil(image: Image.Image | np.ndarray | str | Path) -> Image.Image:
    """Accept a path, a PIL image or an H×W(×C) array and return an RGB PIL image."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if arr.size and float(np.nanmax(arr)) <= 1.0 and float(np.nanmin(arr)) >= 0.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return to_rgb(Image.fromarray(arr))
    raise FeaturelensError(f"cannot interpret an array of shape {arr.shape} as an image")


def list_images(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Image files directly in ``folder`` by suffix (sorted), and the other files that were skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageLoadError(f"{folder}: not a folder")
    images, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            (images if p.suffix.lower() in IMAGE_SUFFIXES else skipped).append(p)
    return images, skipped


# ---------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------
def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each map of ``maps`` ([B, ...]) to [0, 1] independently.

    A constant map (max - min <= eps) becomes all zeros, never NaN. NaN/inf inputs are zeroed first.
    """
    flat = torch.nan_to_num(maps.flatten(1).float(), nan=0.0, posinf=0.0, neginf=0.0)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def resize_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize maps [B, h, w] to [B, H, W] (values stay inside the input range)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(
        maps.unsqueeze(1).float(), size=tuple(size), mode="bilinear", align_corners=False
    ).squeeze(1)


def resize_map_np(m: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Resize one 2-D numpy map to (H, W) bilinearly, returning float32."""
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None]
    return resize_maps(t, size_hw)[0].numpy()


def colorize(m: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Map a [0, 1] array to H×W×3 uint8 colours with a matplotlib colormap."""
    import matplotlib

    cmap = matplotlib.colormaps[colormap]
    rgba = cmap(np.clip(np.nan_to_num(m), 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(
    image: Image.Image | np.ndarray,
    saliency: np.ndarray | torch.Tensor,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> np.ndarray:
    """Blend a [0, 1] map over an RGB image; the map is resized to the image. Returns H×W×3 uint8."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.asarray(as_pil(image), dtype=np.float32)
    m = saliency.detach().cpu().numpy() if isinstance(saliency, torch.Tensor) else np.asarray(saliency)
    m = np.squeeze(m)
    if m.ndim != 2:
        raise ValueError(f"a saliency map must be 2-D, got shape {m.shape}")
    if m.shape != rgb.shape[:2]:
        m = resize_map_np(m, rgb.shape[:2])
    heat = colorize(m, colormap).astype(np.float32)
    out = (1.0 - alpha) * rgb + alpha * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def sample_images(names: Iterable[str] | None = None) -> dict[str, Image.Image]:
    """Real photos that ship with scikit-image (offline): name -> RGB PIL image."""
    from skimage import data

    names = list(names) if names is not None else ["coffee", "chelsea", "astronaut", "rocket"]
    out = {}
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            raise FeaturelensError(f"scikit-image has no sample image {name!r}")
        out[name] = as_pil(loader())
    return out
