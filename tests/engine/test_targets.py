"""Structured targets (segmentation, boxes, an element of a tuple/dict output) against explicit formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featurelens.api import Explainer
from featurelens.errors import TargetError
from featurelens.targets import BoxTarget, ClassTarget, OutputElement, SegmentationTarget


class TinySeg(nn.Module):
    """conv(3→6) → ReLU → conv(6→3): per-pixel logits of 3 classes, [B, 3, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu1(self.conv1(x)))


def test_segmentation_target_sums_a_class_over_a_mask(tiny_input):
    torch.manual_seed(0)
    model = TinySeg().eval()
    mask = torch.zeros(10, 12)
    mask[2:6, 3:9] = 1
    with torch.no_grad():
        out = model(tiny_input)
    expected = torch.tensor(
        [sum(float(out[b, 1, i, j]) for i in range(10) for j in range(12) if mask[i, j]) for b in range(3)]
    )
    assert torch.allclose(SegmentationTarget(1, mask)(out), expected, atol=1e-4)
    # Grad-CAM with it: the gradient of that sum, by hand
    exp = Explainer(model, "relu1").explain(tiny_input, "gradcam", SegmentationTarget(1, mask))
    store = {}
    h = model.relu1.register_forward_hook(lambda m, i, o: store.update(a=o))
    a = None
    try:
        o = model(tiny_input)
        a = store["a"]
        (g,) = torch.autograd.grad((o[:, 1] * mask).sum(), a)
    finally:
        h.remove()
    manual = torch.relu((g.mean(dim=(2, 3))[:, :, None, None] * a.detach()).sum(1))
    assert torch.allclose(exp.raw_maps["relu1"], manual, atol=1e-5)
    with pytest.raises(TargetError, match="out of range"):
        SegmentationTarget(5, mask)(out)
    with pytest.raises(TargetError, match="pixels"):
        SegmentationTarget(1, torch.ones(4, 4))(out)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _explicit_box_score(ref_boxes, ref_labels, det, t):
    total = 0.0
    for r, lr in zip(ref_boxes.tolist(), ref_labels.tolist()):
        best, best_iou = None, -1.0
        for n, (box, lab) in enumerate(zip(det["boxes"].tolist(), det["labels"].tolist())):
            if lab == lr and _iou(r, box) > best_iou:
                best, best_iou = n, _iou(r, box)
        if best is not None and best_iou >= t:
            total += float(det["scores"][best])
    return total


def test_box_target_scores_the_best_matching_box():
    torch.manual_seed(0)
    dets = []
    for _ in range(3):
        xy = torch.rand(6, 2) * 20
        dets.append(
            {"boxes": torch.cat([xy, xy + 5 + 5 * torch.rand(6, 2)], 1), "scores": torch.rand(6), "labels": torch.randint(0, 2, (6,))}
        )
    ref = torch.tensor([[2.0, 2.0, 9.0, 9.0], [10.0, 5.0, 20.0, 15.0]])
    labels = torch.tensor([0, 1])
    for t in (0.0, 0.1, 0.3, 0.5):
        got = BoxTarget(ref, labels, iou_threshold=t)(dets)
        expected = torch.tensor([_explicit_box_score(ref, labels, d, t) for d in dets])
        assert torch.allclose(got, expected, atol=1e-6), t
    # a prediction equal to the reference box always matches, with its own score
    dets[0]["boxes"][3] = ref[0]
    dets[0]["labels"][3] = 0
    assert BoxTarget(ref[:1], labels[:1], iou_threshold=0.99)(dets)[0] == dets[0]["scores"][3]
    batched = {k: torch.stack([d[k] for d in dets]) for k in ("boxes", "scores", "labels")}
    assert torch.allclose(BoxTarget(ref, labels, 0.3)(batched), BoxTarget(ref, labels, 0.3)(dets))
    with pytest.raises(TargetError, match="detection output"):
        BoxTarget(ref, labels)(torch.zeros(3, 5))


class TinyDetector(nn.Module):
    """Fixed anchor boxes on a 10×12 image, a score per anchor from a small CNN: a detection-style output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4 * 10 * 12, 3)
        self.register_buffer("anchors", torch.tensor([[0.0, 0.0, 6.0, 5.0], [6.0, 0.0, 12.0, 5.0], [0.0, 5.0, 12.0, 10.0]]))

    def forward(self, x):
        scores = torch.sigmoid(self.head(self.relu(self.conv(x)).flatten(1)))
        b = x.shape[0]
        return [{"boxes": self.anchors, "scores": scores[i], "labels": torch.tensor([0, 1, 0])} for i in range(b)]


def test_box_target_explains_a_detector(tiny_input):
    torch.manual_seed(0)
    model = TinyDetector().eval()
    target = BoxTarget(torch.tensor([[6.0, 0.0, 12.0, 6.0]]), torch.tensor([1]), iou_threshold=0.5)
    exp = Explainer(model, "relu").explain(tiny_input, "gradcam", target)
    with torch.no_grad():
        assert torch.allclose(exp.scores, torch.stack([d["scores"][1] for d in model(tiny_input)]))
    assert exp.map.shape == (3, 10, 12) and torch.isfinite(exp.map).all()


class TwoHeads(nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 5)
        self.aux = nn.Linear(4, 2)
        self.as_dict = as_dict

    def forward(self, x):
        z = self.relu(self.conv(x)).mean(dim=(2, 3))
        return {"logits": self.fc(z), "aux": self.aux(z)} if self.as_dict else (self.fc(z), self.aux(z))


@pytest.mark.parametrize("as_dict", [False, True])
def test_output_element_selects_one_output(tiny_input, as_dict):
    model = TwoHeads(as_dict).eval()
    key = "logits" if as_dict else 0
    out = model(tiny_input)
    assert torch.allclose(OutputElement(key, 3)(out), out[key][:, 3])
    assert torch.equal(OutputElement(key).indices(out), out[key].argmax(1))
    aux = "aux" if as_dict else 1
    assert torch.allclose(OutputElement(aux, ClassTarget(1, "probability"))(out), out[aux].softmax(1)[:, 1])
    exp = Explainer(model, "relu").explain(tiny_input, "gradcam", OutputElement(key, 3))
    assert torch.equal(exp.target_indices, torch.tensor([3, 3, 3]))
    plain = Explainer(model, "relu").explain(tiny_input, "gradcam", OutputElement(aux, 0))
    assert not torch.allclose(plain.raw_maps["relu"], exp.raw_maps["relu"])
    with pytest.raises(TargetError, match="no element"):
        OutputElement("nope")(out)


def test_a_plain_callable_is_a_target(tiny_cnn, tiny_input):
    """How to write a target: any differentiable output -> [B] function."""
    exp = Explainer(tiny_cnn, "relu2").explain(tiny_input, "gradcam", lambda out: out[:, 1] - out[:, 2])
    assert torch.allclose(exp.scores, (tiny_cnn(tiny_input)[:, 1] - tiny_cnn(tiny_input)[:, 2]).detach())
    assert exp.target_indices is None
