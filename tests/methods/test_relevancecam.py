"""Relevance-CAM: reference test against hand-propagated relevance, invariants, and the real model.

The reference relevance is computed with explicit matrices (each layer turned into ``M`` with
``f(x) = M x + b``) and the LRP formulas written out; then ``α_k = Σ_ij R_k[i, j]`` and
``L = ReLU(Σ_k α_k A_k)`` are evaluated with loops and compared with the method's raw map.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from featurelens.api import Explainer
from featurelens.errors import FeaturelensError, MethodError
from featurelens.lrp import LRPUnsupportedError
from featurelens.methods import get_method
from featurelens.methods.relevancecam import RelevanceCAM
from featurelens.models.efficientnet_lite import Add

EPS = 1e-6


def dense(f, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``(M, b)`` with ``f(x).flatten() = M @ x.flatten() + b`` (one sample), column by column."""
    with torch.no_grad():
        zero = torch.zeros(1, *in_shape, dtype=torch.float64)
        b = f(zero).flatten()
        cols = []
        for i in range(zero.numel()):
            e = torch.zeros(zero.numel(), dtype=torch.float64)
            e[i] = 1.0
            cols.append(f(e.view(1, *in_shape)).flatten() - b)
    return torch.stack(cols, dim=1), b


def eps_rule(m: Tensor, b: Tensor, x: Tensor, r: Tensor) -> Tensor:
    z = m @ x + b
    z = z + EPS * torch.where(z >= 0, 1.0, -1.0).double()
    return x * (m.T @ (r / z))


def zplus_rule(m: Tensor, b: Tensor, x: Tensor, r: Tensor) -> Tensor:
    pos = (m * x[None, :]).clamp(min=0)  # α1β0: positive contributions (x_i m_ji)⁺ only
    return (pos / (pos.sum(1, keepdim=True) + 1e-12) * r[:, None]).sum(0)


class ResCNN(nn.Module):
    """conv(3→4) → ReLU → conv(4→4) → ReLU → add(·, skip) → GAP → FC(4→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.add = Add()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        a1 = self.relu1(self.conv1(x))
        return self.fc(self.flatten(self.pool(self.add(self.relu2(self.conv2(a1)), a1))))


def hand_relevance(model: ResCNN, x1: Tensor, cls: int, rules: str) -> dict[str, tuple[Tensor, Tensor]]:
    """(activation, relevance) at relu1, relu2 and add for ONE sample, start = one-hot × logit."""
    h, w = x1.shape[-2:]
    m1, b1 = dense(model.conv1, (3, h, w))
    m2, b2 = dense(model.conv2, (4, h, w))
    mp, bp = dense(model.pool, (4, h, w))
    mf, bf = model.fc.weight.detach(), model.fc.bias.detach()
    a1 = (m1 @ x1.flatten() + b1).clamp(min=0)
    a2 = (m2 @ a1 + b2).clamp(min=0)
    s = a2 + a1
    g = mp @ s
    y = mf @ g + bf
    r_y = torch.zeros_like(y)
    r_y[cls] = y[cls]
    rule = zplus_rule if rules == "zplus" else eps_rule
    r_s = eps_rule(mp, bp, s, rule(mf, bf, g, r_y))
    stab = s + EPS * torch.where(s >= 0, 1.0, -1.0).double()
    r_a2 = a2 / stab * r_s
    r_a1 = rule(m2, b2, a1, r_a2) + a1 / stab * r_s
    shape = (4, h, w)
    return {
        "add": (s.view(shape), r_s.view(shape)),
        "relu2": (a2.view(shape), r_a2.view(shape)),
        "relu1": (a1.view(shape), r_a1.view(shape)),
    }


def relevance_cam_loops(a: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """α_k = Σ_ij R_k[i, j];  L[i, j] = max(0, Σ_k α_k A_k[i, j]) with explicit loops."""
    k_n, h, w = a.shape
    alpha = [sum(float(r[k, i, j]) for i in range(h) for j in range(w)) for k in range(k_n)]
    out = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            out[i, j] = max(0.0, sum(alpha[k] * float(a[k, i, j]) for k in range(k_n)))
    return out, torch.tensor(alpha, dtype=torch.float64)


@pytest.fixture
def res_cnn() -> ResCNN:
    torch.manual_seed(21)
    return ResCNN().double().eval()


@pytest.fixture
def res_input() -> Tensor:
    torch.manual_seed(22)
    return torch.randn(2, 3, 5, 6, dtype=torch.float64)


@pytest.mark.parametrize("rules", ["epsilon", "zplus"])
@pytest.mark.parametrize("layer", ["relu1", "relu2", "add"])
def test_reference_against_hand_propagated_relevance(res_cnn, res_input, rules, layer):
    exp = Explainer(res_cnn, [layer]).explain(res_input, RelevanceCAM(rules=rules))
    with torch.no_grad():
        classes = res_cnn(res_input).argmax(1)
    for n in range(res_input.shape[0]):
        a, r = hand_relevance(res_cnn, res_input[n], int(classes[n]), rules)[layer]
        want_map, want_alpha = relevance_cam_loops(a, r)
        assert torch.allclose(exp.weights[layer][n].double(), want_alpha, atol=1e-9, rtol=1e-7)
        assert torch.allclose(exp.raw_maps[layer][n].double(), want_map, atol=1e-9, rtol=1e-7)
    assert exp.maps[layer].shape == (2, 5, 6)
    assert float(exp.maps[layer].min()) >= 0 and float(exp.maps[layer].max()) <= 1


def test_registered_by_name_and_alias():
    for name in ("relevancecam", "relevance-cam", "Relevance_CAM"):
        assert isinstance(get_method(name), RelevanceCAM)
    m = get_method("relevance-cam", rules="zplus", start="one")
    assert m.rules == "zplus" and m.start == "one"
    with pytest.raises(MethodError, match="start"):
        RelevanceCAM(start="half")


def test_start_one_is_the_logit_start_divided_by_the_logit(res_cnn, res_input):
    """LRP is linear in the start relevance: weights with R_c = 1 are weights with R_c = z_c over z_c."""
    logit = Explainer(res_cnn, ["relu1"]).explain(res_input, RelevanceCAM(start="logit"))
    one = Explainer(res_cnn, ["relu1"]).explain(res_input, RelevanceCAM(start="one"))
    z = logit.scores.double()[:, None]
    assert torch.allclose(one.weights["relu1"].double() * z, logit.weights["relu1"].double(), atol=1e-9, rtol=1e-7)


def test_callable_target_equals_class_target(res_cnn, res_input):
    """Without class indices the start is output ⊙ ∂target/∂output, i.e. one-hot × logit for a logit."""
    by_class = Explainer(res_cnn, ["relu2"]).explain(res_input, "relevancecam", target=2)
    by_callable = Explainer(res_cnn, ["relu2"]).explain(res_input, "relevancecam", target=lambda out: out[:, 2])
    assert torch.allclose(by_class.raw_maps["relu2"], by_callable.raw_maps["relu2"], atol=1e-10)


def test_batch_equals_one_by_one_and_runs_with_gradcam(res_cnn, res_input):
    both = Explainer(res_cnn, ["relu1"]).explain(res_input, ["relevancecam", "gradcam"])
    singles = [Explainer(res_cnn, ["relu1"]).explain(res_input[i : i + 1], "relevancecam") for i in range(2)]
    for i in range(2):
        assert torch.allclose(both["relevancecam"].raw_maps["relu1"][i], singles[i].raw_maps["relu1"][0], atol=1e-10)
    assert set(both) == {"relevancecam", "gradcam"}


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_restores_model_after_success_and_error(res_cnn, res_input):
    res_cnn.train()
    Explainer(res_cnn, ["relu1"]).explain(res_input, "relevancecam")
    assert hook_count(res_cnn) == 0 and res_cnn.training
    assert all(p.grad is None and p.requires_grad for p in res_cnn.parameters())

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, dtype=torch.float64))

        def forward(self, x: Tensor) -> Tensor:
            return x * self.w

    model = nn.Sequential(nn.Conv2d(3, 4, 3).double(), Odd(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2).double())
    with pytest.raises(LRPUnsupportedError, match="Odd") as info:
        Explainer(model, ["0"]).explain(res_input, "relevancecam")
    assert isinstance(info.value, FeaturelensError)
    assert hook_count(model) == 0 and all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------
# the real EfficientNet-Lite0 on a real photo
# ---------------------------------------------------------------------------
# skimage's coffee() resized to 224×224: the cup (rim and coffee) lies in rows 0–115, columns 55–170
CUP = (slice(0, 115), slice(55, 170))


def cup_share(m: Tensor) -> float:
    return float(m[CUP].sum() / m.sum())


@pytest.mark.slow
def test_lite0_coffee_map_is_on_the_cup_at_head_and_blocks_12(lite0, photos):
    """Measured: cup share 0.57 (head) and 0.41 (blocks.12) of the map mass, against 0.26 for a
    uniform map; Grad-CAM at blocks.12 puts only 0.02 there (gradients shatter in the middle of the
    network, the Relevance-CAM paper's point)."""
    x = lite0.prepare([photos["coffee"]])
    exps = Explainer(lite0.model, ["head", "blocks.12"]).explain(x, ["relevancecam", "gradcam"])
    exp = exps["relevancecam"]
    assert lite0.class_names[int(exp.target_indices[0])] == "espresso"
    uniform = (115 * 115) / (224 * 224)  # 0.26 of the image
    for layer, channels, min_share in (("head", 1280, 1.7 * uniform), ("blocks.12", 192, 1.2 * uniform)):
        raw, m = exp.raw_maps[layer], exp.maps[layer][0]
        assert raw.shape == (1, 7, 7) and torch.isfinite(raw).all() and float(raw.max()) > 0
        assert exp.weights[layer].shape == (1, channels)
        share = cup_share(m)
        assert share > min_share, (layer, share)
        peak = divmod(int(m.argmax()), 224)
        assert CUP[0].start <= peak[0] < CUP[0].stop and CUP[1].start <= peak[1] < CUP[1].stop, (layer, peak)
    assert cup_share(exp.maps["blocks.12"][0]) > 5 * cup_share(exps["gradcam"].maps["blocks.12"][0])
    assert hook_count(lite0.model) == 0
    assert all(p.grad is None for p in lite0.model.parameters())
