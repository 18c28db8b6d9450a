"""Reference tests of the pixel-space methods: Guided Backpropagation and Guided Grad-CAM against a
hand-written backward pass of TinyCNN, FullGrad against an explicit decomposition on a conv-BN net."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_reference import ATOL, RTOL, ref_gradcam, reference_state
from torch import nn

from featurelens.api import Explainer
from featurelens.errors import MethodError


def manual_guided(model, x, classes):
    """Guided backprop written out: FC → GAP → guided ReLU → conv2ᵀ → guided ReLU → conv1ᵀ."""
    w1, b1, w2, b2 = (t.detach() for t in (model.conv1.weight, model.conv1.bias, model.conv2.weight, model.conv2.bias))
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        z1 = F.conv2d(xb, w1, b1, padding=1)
        z2 = F.conv2d(torch.relu(z1), w2, b2, padding=1)
        h, w = z2.shape[-2:]
        d_a2 = model.fc.weight.detach()[classes[b]][None, :, None, None].expand_as(z2) / (h * w)
        r2 = d_a2 * (z2 > 0) * (d_a2 > 0)
        d_a1 = F.conv_transpose2d(r2, w2, padding=1)
        r1 = d_a1 * (z1 > 0) * (d_a1 > 0)
        out.append(F.conv_transpose2d(r1, w1, padding=1)[0])
    return torch.stack(out)


def test_guided_backprop_matches_manual_backward(tiny_cnn, tiny_input):
    classes = tiny_cnn(tiny_input).argmax(1).tolist()
    g = manual_guided(tiny_cnn, tiny_input, classes)
    ref = g.abs().amax(dim=1)
    exp = Explainer(tiny_cnn, "relu2").explain(tiny_input, "guided-backprop")
    assert ref.max() > 0
    assert torch.allclose(exp.raw_maps["relu2"], ref, atol=1e-6, rtol=1e-4)
    plain = tiny_input.clone().requires_grad_(True)
    (pg,) = torch.autograd.grad(tiny_cnn(plain).gather(1, torch.tensor(classes)[:, None]).sum(), plain)
    assert not torch.allclose(pg.abs().amax(1), ref, atol=1e-4)  # the guided rule changes the gradient
    assert all(p.grad is None for p in tiny_cnn.parameters())


def test_guided_gradcam_is_guided_times_upsampled_gradcam(tiny_cnn, tiny_input):
    a, g, classes, _ = reference_state(tiny_cnn, tiny_input, "relu2")
    cam, w = ref_gradcam(a, g, tiny_cnn, classes)
    ref = manual_guided(tiny_cnn, tiny_input, classes).abs().amax(dim=1).double() * cam  # relu2 is 10×12
    exp = Explainer(tiny_cnn, "relu2").explain(tiny_input, "guided-grad-cam")
    assert torch.allclose(exp.raw_maps["relu2"].double(), ref, atol=1e-7, rtol=1e-4)
    assert torch.allclose(exp.weights["relu2"].double(), w, atol=ATOL, rtol=RTOL)


def test_guided_backprop_inplace_relu6_and_no_relu_error(tiny_input):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        net[0].weight.mul_(8)  # push some activations beyond 6
    exp = Explainer(net, "1").explain(tiny_input, "guidedbackprop")
    x = tiny_input.clone()
    z = F.conv2d(x, net[0].weight.detach(), net[0].bias.detach(), padding=1)
    cls = net(tiny_input).argmax(1)
    d = net[4].weight.detach()[cls][:, :, None, None].expand_as(z) / z[0, 0].numel()
    r = d * (z > 0) * (z < 6) * (d > 0)
    assert ((z > 6).any() and (z < 0).any())
    ref = F.conv_transpose2d(r, net[0].weight.detach(), padding=1).abs().amax(1)
    assert torch.allclose(exp.raw_maps["1"], ref, atol=1e-6, rtol=1e-4)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 120, 2)).eval()
    with pytest.raises(MethodError, match="ReLU"):
        Explainer(plain, "0").explain(tiny_input, "guidedbackprop")
    assert sum(len(m._forward_hooks) for m in plain.modules()) == 0


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x))))).mean(dim=(2, 3)))


def psi_loop(t):
    """|t| rescaled to [0, 1] over one sample's whole [C, h, w] tensor."""
    t = t.abs()
    lo, hi = float(t.min()), float(t.max())
    return (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)


def test_fullgrad_matches_explicit_decomposition(tiny_input):
    torch.manual_seed(6)
    model = ConvBN()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.3, 0.3)
    model.train()  # must be explained in eval mode, and left in train mode
    bn = model.bn
    bn_bias = (bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)).detach()
    x = tiny_input.clone().requires_grad_(True)
    zb = F.batch_norm(model.conv1(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    z2 = model.conv2(torch.relu(zb))
    logits = model.fc(torch.relu(z2).mean(dim=(2, 3)))
    classes = logits.argmax(1)
    gx, gb, g2 = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), [x, zb, z2])
    ref = []
    for b in range(x.shape[0]):
        total = psi_loop(gx[b] * x[b].detach()).sum(0)
        total = total + psi_loop(gb[b] * bn_bias[:, None, None]).sum(0)
        up = F.interpolate(psi_loop(g2[b] * model.conv2.bias.detach()[:, None, None]).sum(0)[None, None],
                           size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        ref.append(total + up)
    ref = torch.stack(ref).detach()
    model.zero_grad(set_to_none=True)
    exp = Explainer(model, "conv2").explain(tiny_input, "full-grad")
    assert model.training
    assert exp.raw_maps["conv2"].shape == (3, 10, 12) and exp.weights["conv2"] is None
    assert torch.allclose(exp.raw_maps["conv2"], ref, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_guided_backprop_alone_uses_the_engine_pass_and_agrees_with_its_own_pass(tiny_cnn, tiny_input):
    """Explained alone, Guided Backprop is the engine's single pass (guided rules, differentiable input);
    next to another method it runs its own. Both equal the hand-written backward."""
    classes = tiny_cnn(tiny_input).argmax(1).tolist()
    ref = manual_guided(tiny_cnn, tiny_input, classes).abs().amax(dim=1)
    calls = []
    handle = tiny_cnn.register_forward_hook(lambda *_: calls.append(1))
    try:
        alone = Explainer(tiny_cnn, "relu2").explain(tiny_input, "guidedbackprop")
        assert len(calls) == 1
        calls.clear()
        shared = Explainer(tiny_cnn, "relu2").explain(tiny_input, ["guidedbackprop", "gradcam"])
        assert len(calls) == 2  # the engine's plain pass, then the method's guided one
    finally:
        handle.remove()
    for exp in (alone, shared["guidedbackprop"]):
        assert torch.allclose(exp.raw_maps["relu2"], ref, atol=ATOL, rtol=RTOL)
    assert all(p.grad is None and p.requires_grad for p in tiny_cnn.parameters())  # restored, untouched
