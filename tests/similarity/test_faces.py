"""Face front end: detection, the chip→photo transform against dlib's own chips, warp-back, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurelens.similarity.faces import (
    CHIP_SIZE,
    FaceIndexError,
    NoFaceError,
    box_in_chip,
    chip_face,
    detect_faces,
    face_photo,
    prepare_face,
    warp_to_photo,
)

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def obama():
    im = Image.open(face_photo("obama")).convert("RGB")
    return im, detect_faces(im)


def _sample(photo: np.ndarray, tf: np.ndarray) -> np.ndarray:
    """Explicit bilinear resampling of the photo at ``A · (u, v, 1)`` for every chip pixel."""
    v, u = np.mgrid[0:CHIP_SIZE, 0:CHIP_SIZE].astype(np.float64)
    x = tf[0, 0] * u + tf[0, 1] * v + tf[0, 2]
    y = tf[1, 0] * u + tf[1, 1] * v + tf[1, 2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    h, w = photo.shape[:2]

    def at(yy, xx):
        return photo[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.float64)

    return (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
            + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)


def test_chip_transform_reproduces_dlib_chip(obama):
    im, faces = obama
    assert len(faces) == 1
    for photo in (im, im.rotate(12, resample=Image.BILINEAR)):  # upright (angle ≈ 0) and tilted (≈ −0.21 rad)
        (tilted,) = detect_faces(photo) if photo is not im else faces
        ours = _sample(np.asarray(photo), tilted.chip_to_photo)
        diff = np.abs(ours - np.asarray(tilted.chip, dtype=np.float64))
        assert diff.mean() < 1.0  # grey levels (0.5 measured); a 3-px offset or a flipped angle gives > 10
    face = faces[0]
    # the landmarks land inside the chip, eyes above the nose
    inv = face.photo_to_chip()
    pts = (inv[:, :2] @ face.landmarks.T).T + inv[:, 2]
    assert np.all((pts > 0) & (pts < CHIP_SIZE))
    assert pts[4, 1] > pts[:4, 1].mean()  # point 4 (nose) is below the eye corners


def test_warp_back_places_chip_points(obama):
    im, (face,) = obama
    m = np.zeros((CHIP_SIZE, CHIP_SIZE), np.float32)
    m[40:50, 100:110] = 1.0
    warped = warp_to_photo(m, face)
    assert warped.shape == (im.height, im.width)
    ys, xs = np.nonzero(warped > 0.5)
    cu, cv = 104.5, 44.5
    px = face.chip_to_photo @ np.array([cu, cv, 1.0])
    assert abs(xs.mean() - px[0]) < 2 and abs(ys.mean() - px[1]) < 2
    # energy outside the chip is zero; a low-resolution map is upsampled first
    assert warp_to_photo(torch.ones(2, 2), face)[0, 0] == 0
    assert box_in_chip(face).mean() > 0.2


def test_chip_input_needs_no_detector(obama):
    _, (face,) = obama
    f = prepare_face(face.chip, name="chip.png")
    assert f.box == (0, 0, CHIP_SIZE, CHIP_SIZE)
    assert np.allclose(warp_to_photo(np.eye(CHIP_SIZE, dtype=np.float32), f), np.eye(CHIP_SIZE), atol=1e-5)
    big = chip_face(face.chip.resize((300, 300)))
    assert big.photo_size == (300, 300)


def test_errors_and_several_faces(obama):
    im, _ = obama
    with pytest.raises(NoFaceError, match=r"blank\.jpg: no face found"):
        prepare_face(Image.new("RGB", (320, 240), (120, 130, 140)), name="blank.jpg")
    small = im.resize((im.width // 2, im.height // 2))
    two = Image.new("RGB", (im.width + small.width, im.height), (0, 0, 0))
    two.paste(im, (0, 0))
    two.paste(small, (im.width, 0))
    faces = detect_faces(two)
    assert len(faces) == 2 and faces[0].area > faces[1].area
    assert prepare_face(two).box == faces[0].box  # largest by default
    assert prepare_face(two, face=1).box[0] >= im.width
    with pytest.raises(FaceIndexError, match="2 face"):
        prepare_face(two, name="two.jpg", face=2)
