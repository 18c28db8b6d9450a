"""The real pretrained EfficientNet-Lite0 on a real photo: the classic CAMs point at the object."""

from __future__ import annotations

import pytest
import torch

from featurelens.api import Explainer

pytestmark = pytest.mark.slow

# the cup (with its rim and coffee) in coffee() resized to 224×224: rows 5..130, columns 60..160
CUP = (slice(5, 130), slice(60, 160))


@pytest.fixture(scope="module")
def coffee(lite0):
    from featurelens.imaging import sample_images

    return lite0.prepare([sample_images(["coffee"])["coffee"]])


def test_coffee_is_espresso_and_gradcam_points_at_the_cup(lite0, coffee):
    with torch.no_grad():
        probs = torch.softmax(lite0.model(coffee), dim=1)
    top = int(probs.argmax())
    assert lite0.class_name(top) == "espresso"
    exps = Explainer(lite0.model, lite0.default_layer).explain(coffee, ["gradcam", "cam", "gradcampp", "layercam"])
    for name, exp in exps.items():
        assert int(exp.target_indices[0]) == top
        m = exp.map[0]
        assert m.shape == (224, 224) and torch.isfinite(m).all()
        assert m.min() == 0 and torch.isclose(m.max(), torch.tensor(1.0))
        row, col = divmod(int(m.argmax()), 224)
        assert CUP[0].start <= row < CUP[0].stop and CUP[1].start <= col < CUP[1].stop, (name, row, col)
        inside = m[CUP].mean()
        outside = (m.sum() - m[CUP].sum()) / (m.numel() - m[CUP].numel())
        assert inside > 2.5 * outside, name
    # GAP → (eval) dropout → FC: Grad-CAM weights are exactly the CAM weights / (h·w)
    gc, cam = exps["gradcam"], exps["cam"]
    assert torch.allclose(gc.weights["head"] * 49, cam.weights["head"], atol=1e-5)
    assert torch.allclose(gc.map, cam.map, atol=1e-4)


def test_fast_scorecam_on_real_model(lite0, coffee):
    exp = Explainer(lite0.model, "head").explain(
        coffee, "scorecam", method_options={"scorecam": {"top_n": 16, "batch_size": 16}}
    )
    w = exp.weights["head"][0]
    assert int((w > 0).sum()) == 16
    assert ((w >= 0) & (w <= 1)).all()
    m = exp.map[0]
    row, col = divmod(int(m.argmax()), 224)
    assert CUP[0].start <= row < CUP[0].stop and CUP[1].start <= col < CUP[1].stop
