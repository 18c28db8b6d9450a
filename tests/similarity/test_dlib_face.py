"""The pure-PyTorch port of dlib's face ResNet against dlib itself (dlib-bin) on the shipped real photos."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from featurelens.models.dlib_face import (
    SAME_PERSON_THRESHOLD,
    DatFormatError,
    DlibReader,
    add_prev,
    load_dlib_face,
    model_path,
    preprocess_chips,
    read_dat,
)
from featurelens.similarity.faces import face_photo, face_photo_names

PHOTOS = ["obama", "obama2", "obama3", "biden"]


@pytest.fixture(scope="module")
def reference():
    """dlib's own chips, shapes and descriptors (``compute_face_descriptor``) for each photo."""
    from PIL import Image

    dlib = pytest.importorskip("dlib")
    folder = model_path().parent
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
    fr = dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat"))
    out = {}
    for name in PHOTOS:
        img = np.asarray(Image.open(face_photo(name)).convert("RGB"))
        (d,) = det(img, 1)
        shape = sp(img, d)
        chip = dlib.get_face_chip(img, shape, 150, 0.25)
        out[name] = (chip, np.array(fr.compute_face_descriptor(img, shape)))
    return out


@pytest.fixture(scope="module")
def net():
    return load_dlib_face()


def test_portable_integers_and_floats():
    # 0x01 0x2a = 42; 0x81 0x05 = -5; 0x00 = 0; float = mantissa 3 · 2^-1
    r = DlibReader(bytes([0x01, 0x2A, 0x81, 0x05, 0x00, 0x01, 0x03, 0x81, 0x01]))
    assert (r.int(), r.int(), r.int()) == (42, -5, 0)
    assert r.float() == 1.5
    with pytest.raises(DatFormatError):
        DlibReader(bytes([0x01])).int()


def test_file_structure():
    records, loss = read_dat(model_path())
    assert loss["distance_threshold"] == pytest.approx(0.6)
    names = [r.kind for r in records]
    assert names.count("con") == 29 and names.count("affine") == 29 and names.count("add_prev") == 14
    assert records[0].fields["size"] == (150, 150) and records[-1].kind == "fc"


def test_add_prev_zero_pads():
    a, b = torch.ones(1, 2, 3, 3), torch.full((1, 4, 4, 4), 2.0)
    s = add_prev(a, b)
    assert s.shape == (1, 4, 4, 4)
    assert torch.all(s[:, :2, :3, :3] == 3) and torch.all(s[:, 2:] == 2) and torch.all(s[:, :, 3] == 2)


def test_named_modules_and_shapes(net):
    names = dict(net.named_modules())
    assert {"stem.conv", "stage1.0.conv1", "stage4.0.shortcut", "stage5.0.conv2", "fc"} <= set(names)
    acts = {}
    hooks = [names[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o.shape)) for n in
             ("stem", "stage1", "stage2", "stage3", "stage4", "stage5")]
    with torch.no_grad():
        net(torch.zeros(1, 3, 150, 150))
    for h in hooks:
        h.remove()
    assert acts["stem"] == (1, 32, 35, 35) and acts["stage2"] == (1, 64, 17, 17)
    assert acts["stage4"] == (1, 256, 4, 4) and acts["stage5"] == (1, 256, 2, 2)


def test_descriptors_match_dlib(net, reference):
    from PIL import Image

    chips = [Image.fromarray(reference[n][0]) for n in PHOTOS]
    with torch.no_grad():
        ours = net(preprocess_chips(chips)).double().numpy()
    theirs = np.stack([reference[n][1] for n in PHOTOS])
    assert np.abs(ours - theirs).max() <= 1e-4
    # same/different decisions at 0.6 match dlib's on every pair
    for i, j in itertools.combinations(range(len(PHOTOS)), 2):
        d_ours = np.linalg.norm(ours[i] - ours[j])
        d_dlib = np.linalg.norm(theirs[i] - theirs[j])
        assert (d_ours < SAME_PERSON_THRESHOLD) == (d_dlib < SAME_PERSON_THRESHOLD)
        assert (d_dlib < SAME_PERSON_THRESHOLD) == (PHOTOS[i].startswith("obama") and PHOTOS[j].startswith("obama"))


def test_inspect_sees_the_model():
    from featurelens.models import load_model

    spec = load_model("dlib_face")
    layers = {li.name for li in spec.layers()}
    assert {"stage5", "stage3.1.conv2", "fc"} <= layers
    assert set(PHOTOS) <= set(face_photo_names())
