"""Face front end: detect, align to dlib's 150-px chip, and warp chip maps back onto the photo.

Detection (HOG frontal-face detector), the 5-point landmarks and the chip geometry come from
``dlib-bin`` (``pip install featurelens[faces]``); an image that is already a 150×150 aligned chip is
used as is without dlib (:func:`prepare_face` with ``aligned=True``, or any 150×150 input).

The chip is dlib's ``get_face_chip(img, shape, 150, 0.25)``: a rotated square ``R`` of the photo
(centre ``c``, angle ``θ``) resampled to 150×150. The chip→photo map is the affine transform that
sends the chip corners ``(0,0), (149,0), (149,149)`` to ``R``'s corners rotated by ``θ`` about ``c``
(dlib's ``get_mapping_to_chip``, inverted). :func:`warp_to_photo` samples a chip map at the chip
position of every photo pixel (bilinear, zero outside the chip), so maps land on the face in the
original photo at its original size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from featurelens.errors import FeaturelensError, ModelError

CHIP_SIZE = 150
CHIP_PADDING = 0.25
PHOTOS_DIR = Path(__file__).with_name("face_photos")


class NoFaceError(FeaturelensError):
    """No face was found in an image."""


class FaceIndexError(FeaturelensError):
    """``--face INDEX`` names a face that is not in the image."""


def face_photo(name: str) -> Path:
    """A shipped face photo (``obama``, ``obama2``, ``obama3``, ``biden``; see face_photos/CREDITS.txt)."""
    p = PHOTOS_DIR / f"{name}.jpg"
    if not p.is_file():
        raise FeaturelensError(f"no shipped face photo {name!r}; available: {', '.join(face_photo_names())}")
    return p


def face_photo_names() -> list[str]:
    return sorted(p.stem for p in PHOTOS_DIR.glob("*.jpg"))


@lru_cache(maxsize=1)
def _dlib() -> tuple[Any, Any, Any]:
    try:
        import dlib
    except ImportError:
        raise ModelError("face detection needs dlib: `pip install featurelens[faces]` (dlib-bin); "
                         "150×150 aligned face chips work without it") from None
    from featurelens.models.dlib_face import model_path

    sp_path = model_path().parent / "shape_predictor_5_face_landmarks.dat"
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(sp_path))


@dataclass
class Face:
    """A detected (or given) face: its box in the photo, the aligned chip and the chip→photo affine map.

    ``chip_to_photo`` is 2×3: photo ``(x, y) = A · (u, v, 1)`` for chip pixel ``(u, v)``.
    """

    chip: Image.Image
    box: tuple[int, int, int, int]  # left, top, right, bottom in the photo
    chip_to_photo: np.ndarray
    photo_size: tuple[int, int]  # width, height
    index: int = 0
    count: int = 1
    landmarks: np.ndarray | None = None  # [5, 2] in the photo

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.box
        return max(0, x1 - x0) * max(0, y1 - y0)

    def photo_to_chip(self) -> np.ndarray:
        """The inverse affine map, 2×3."""
        a = np.vstack([self.chip_to_photo, [0, 0, 1]])
        return np.linalg.inv(a)[:2]

    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "face_index": self.index, "faces_found": self.count,
                "chip_to_photo": self.chip_to_photo.round(6).tolist()}


def _rotate(center: np.ndarray, p: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    d = p - center
    return center + np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])


def chip_transform(rect: tuple[float, float, float, float], angle: float, rows: int, cols: int) -> np.ndarray:
    """Chip→photo affine (2×3) of dlib's chip ``(rect = (l, t, r, b), angle, rows, cols)``."""
    x0, y0, x1, y1 = rect
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    src = np.array([[0, 0], [cols - 1, 0], [cols - 1, rows - 1]], dtype=np.float64)
    dst = np.stack([_rotate(center, np.array(p, dtype=np.float64), angle) for p in ((x0, y0), (x1, y0), (x1, y1))])
    # solve dst = A [src; 1]
    m = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(m, dst).T


def detect_faces(image: Image.Image, *, upsample: int = 1) -> list[Face]:
    """Every frontal face of ``image``, largest first, each aligned to a 150-px chip (needs dlib)."""
    dlib, detector, predictor = _dlib()
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    dets = list(detector(rgb, upsample))
    faces = []
    for d in dets:
        shape = predictor(rgb, d)
        details = dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING)
        chip = dlib.extract_image_chip(rgb, details)
        r = details.rect
        tf = chip_transform((r.left(), r.top(), r.right(), r.bottom()), details.angle, details.rows, details.cols)
        marks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        faces.append(Face(Image.fromarray(chip), (d.left(), d.top(), d.right(), d.bottom()), tf, image.size, landmarks=marks))
    faces.sort(key=lambda f: -f.area)
    for i, f in enumerate(faces):
        f.index, f.count = i, len(faces)
    return faces


def chip_face(image: Image.Image) -> Face:
    """An already-aligned chip (resized to 150×150 if needed) as a :class:`Face` covering the image."""
    w, h = image.size
    chip = image.convert("RGB")
    if (w, h) != (CHIP_SIZE, CHIP_SIZE):
        chip = chip.resize((CHIP_SIZE, CHIP_SIZE), Image.BILINEAR)
    sx, sy = (w - 1) / (CHIP_SIZE - 1), (h - 1) / (CHIP_SIZE - 1)
    tf = np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]])
    return Face(chip, (0, 0, w, h), tf, (w, h))


def prepare_face(image: Image.Image, *, name: str = "image", face: int | None = None, aligned: bool | None = None) -> Face:
    """The face to explain in ``image``: a 150×150 input (or ``aligned=True``) is taken as a chip;
    otherwise faces are detected and the largest one (or ``face``-th, largest first) is used.

    Raises :class:`NoFaceError` (naming ``name``) or :class:`FaceIndexError`.
    """
    if aligned or (aligned is None and image.size == (CHIP_SIZE, CHIP_SIZE)):
        if face not in (None, 0):
            raise FaceIndexError(f"{name}: an aligned chip holds one face; --face {face} is out of range")
        return chip_face(image)
    faces = detect_faces(image)
    if not faces:
        raise NoFaceError(f"{name}: no face found (dlib's HOG detector needs a frontal face of about 80 px or more)")
    if face is None:
        return faces[0]
    if not 0 <= face < len(faces):
        raise FaceIndexError(f"{name}: --face {face} is out of range; {len(faces)} face(s) found (0 = largest)")
    return faces[face]


def warp_to_photo(chip_map: torch.Tensor | np.ndarray, face: Face) -> np.ndarray:
    """A chip map ``[h, w]`` (any resolution covering the chip) sampled at every photo pixel ``[H, W]``.

    Photo pixel ``p`` takes the map value at chip position ``A⁻¹ p`` (bilinear; 0 outside the chip).
    """
    m = torch.as_tensor(np.asarray(chip_map, dtype=np.float32))
    if m.ndim != 2:
        raise ValueError(f"chip map must be [h, w], got {list(m.shape)}")
    if m.shape != (CHIP_SIZE, CHIP_SIZE):
        m = F.interpolate(m[None, None], size=(CHIP_SIZE, CHIP_SIZE), mode="bilinear", align_corners=False)[0, 0]
    w, h = face.photo_size
    inv = face.photo_to_chip()
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    # chip pixel centres 0..149 → grid_sample coordinates −1..1 (align_corners=True)
    grid = torch.from_numpy(np.stack([u / (CHIP_SIZE - 1) * 2 - 1, v / (CHIP_SIZE - 1) * 2 - 1], -1)).float()
    out = F.grid_sample(m[None, None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0].numpy()


def chip_mask_in_photo(face: Face) -> np.ndarray:
    """Where the chip lies in the photo (``warp_to_photo`` of ones), ``[H, W]`` in [0, 1]."""
    return warp_to_photo(np.ones((CHIP_SIZE, CHIP_SIZE), np.float32), face)


def box_in_chip(face: Face) -> np.ndarray:
    """A ``[150, 150]`` boolean mask of the chip pixels that fall inside the face's detection box."""
    v, u = np.mgrid[0:CHIP_SIZE, 0:CHIP_SIZE].astype(np.float64)
    a = face.chip_to_photo
    x = a[0, 0] * u + a[0, 1] * v + a[0, 2]
    y = a[1, 0] * u + a[1, 1] * v + a[1, 2]
    x0, y0, x1, y1 = face.box
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
