"""LRP rules against slow explicit formulas, conservation, error handling, and the real EfficientNet-Lite0.

Each layer is turned into an explicit matrix ``M`` (``f(x) = M x + b``, built column by column from
unit vectors, so padding and strides are inside ``M``) and the rules are evaluated with loops or
plain matrix products, independently of the hook machinery in :mod:`featurelens.lrp`.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

from featurelens.errors import InferenceModeError, ModelError, TargetError
from featurelens.lrp import (
    LRP,
    AlphaBeta,
    Composite,
    Epsilon,
    LRPUnsupportedError,
    ZPlus,
    get_composite,
    lrp_relevance,
    start_relevance,
)
from featurelens.models.efficientnet_lite import Add

EPS = 1e-6


# ---------------------------------------------------------------------------
# explicit helpers
# ---------------------------------------------------------------------------
def dense(f, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``(M, b)`` with ``f(x).flatten() = M @ x.flatten() + b`` for one sample of shape ``in_shape``."""
    with torch.no_grad():
        zero = torch.zeros(1, *in_shape, dtype=torch.float64)
        b = f(zero).flatten()
        n = zero.numel()
        cols = []
        for i in range(n):
            e = torch.zeros(n, dtype=torch.float64)
            e[i] = 1.0
            cols.append(f(e.view(1, *in_shape)).flatten() - b)
    return torch.stack(cols, dim=1), b


def eps_loops(m: Tensor, b: Tensor, x: Tensor, r: Tensor, eps: float = EPS) -> Tensor:
    """ε-rule with explicit loops: R_i = Σ_j x_i m_ji / (z_j + ε sign z_j) · R_j."""
    n_out, n_in = m.shape
    out = torch.zeros(n_in, dtype=torch.float64)
    for j in range(n_out):
        z = sum(float(m[j, i]) * float(x[i]) for i in range(n_in)) + float(b[j])
        z = z + (eps if z >= 0 else -eps)
        for i in range(n_in):
            out[i] += float(x[i]) * float(m[j, i]) / z * float(r[j])
    return out


def eps_matrix(m: Tensor, b: Tensor, x: Tensor, r: Tensor, eps: float = EPS) -> Tensor:
    z = m @ x + b
    z = z + eps * torch.where(z >= 0, 1.0, -1.0).double()
    return x * (m.T @ (r / z))


def alphabeta_matrix(m: Tensor, x: Tensor, r: Tensor, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
    """R_i = Σ_j [α (x_i m_ji)⁺ / Σ_i' (x_i' m_ji')⁺ − β (x_i m_ji)⁻ / Σ_i' (x_i' m_ji')⁻] R_j (no bias)."""
    contrib = m * x[None, :]  # [out, in]
    pos, neg = contrib.clamp(min=0), contrib.clamp(max=0)
    zp = pos.sum(1, keepdim=True) + 1e-12
    zn = neg.sum(1, keepdim=True) - 1e-12
    out = alpha * (pos / zp * r[:, None]).sum(0)
    if beta:
        out = out - beta * (neg / zn * r[:, None]).sum(0)
    return out


def input_relevance(model: nn.Module, x: Tensor, r_out: Tensor, rules) -> Tensor:
    res = lrp_relevance(model, x, [], rules=rules, start=r_out, input_relevance=True)
    assert res.input_relevance is not None
    return res.input_relevance


# ---------------------------------------------------------------------------
# single layers
# ---------------------------------------------------------------------------
def test_linear_epsilon_matches_loops():
    torch.manual_seed(0)
    lin = nn.Linear(7, 4).double()
    x = torch.randn(2, 7, dtype=torch.float64)
    r = torch.randn(2, 4, dtype=torch.float64)
    got = input_relevance(nn.Sequential(lin), x, r, "epsilon")
    m, b = lin.weight.detach(), lin.bias.detach()
    for n in range(2):
        assert torch.allclose(got[n], eps_loops(m, b, x[n], r[n]), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (2.0, 1.0)])
def test_linear_alphabeta_matches_formula(alpha, beta):
    torch.manual_seed(1)
    lin = nn.Linear(6, 3).double()
    x = torch.randn(3, 6, dtype=torch.float64)  # mixed signs: exercises the x⁻ W⁻ terms
    r = torch.rand(3, 3, dtype=torch.float64)
    rule = ZPlus() if beta == 0 else AlphaBeta(alpha, beta)
    got = input_relevance(nn.Sequential(lin), x, r, rule)
    for n in range(3):
        want = alphabeta_matrix(lin.weight.detach(), x[n], r[n], alpha, beta)
        assert torch.allclose(got[n], want, atol=1e-10, rtol=1e-8)
    if beta == 0:  # z⁺ conserves (bias ignored)
        assert torch.allclose(got.sum(1), r.sum(1), atol=1e-9)


def test_conv2d_epsilon_and_zplus_match_dense_matrix():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        out_shape = conv(x).shape
    r = torch.randn(out_shape, dtype=torch.float64)
    m, b = dense(conv, (3, 7, 6))
    got_eps = input_relevance(nn.Sequential(conv), x, r, "epsilon")
    got_zp = input_relevance(nn.Sequential(conv), x, r, "zplus")
    for n in range(2):
        xf, rf = x[n].flatten(), r[n].flatten()
        assert torch.allclose(got_eps[n].flatten(), eps_matrix(m, b, xf, rf), atol=1e-9, rtol=1e-7)
        assert torch.allclose(got_zp[n].flatten(), alphabeta_matrix(m, xf, rf), atol=1e-9, rtol=1e-7)


def test_conv_with_padding_inside_forward_is_one_linear_map():
    """The package's Conv2dStaticSamePadding pads in forward; LRP treats the whole forward as the map."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    torch.manual_seed(3)
    conv = Conv2dStaticSamePadding(2, 3, 3, stride=2, image_size=8, bias=True).double()
    assert isinstance(conv.static_padding, nn.ZeroPad2d)  # the padding really happens inside forward
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        r = torch.randn(conv(x).shape, dtype=torch.float64)
    m, b = dense(conv, (2, 8, 8))
    got = input_relevance(nn.Sequential(conv), x, r, "epsilon")
    assert torch.allclose(got.flatten(), eps_matrix(m, b, x.flatten(), r.flatten()), atol=1e-9, rtol=1e-7)


def _bn(channels: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).double().eval()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
        bn.bias.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(channels, generator=g, dtype=torch.float64) + 0.5)
    return bn


def test_batchnorm_is_an_affine_epsilon_map():
    bn = _bn(3, 4)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    r = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    got = input_relevance(nn.Sequential(bn), x, r, "epsilon")
    a = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - a * bn.running_mean
    want = torch.empty_like(x)
    for n in range(2):
        for c in range(3):
            z = a[c] * x[n, c] + shift[c]
            want[n, c] = a[c] * x[n, c] / (z + EPS * torch.where(z >= 0, 1.0, -1.0).double()) * r[n, c]
    assert torch.allclose(got, want, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("merge", [True, False])
def test_conv_batchnorm_zplus_merged_or_separate(merge):
    """Merged: z⁺ on the merged matrix a·M. Separate: ε on BN, then z⁺ on the conv."""
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False).double()
    bn = _bn(3, 6)
    model = nn.Sequential(conv, bn)
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    r = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    comp = Composite(conv=ZPlus(), linear=ZPlus(), merge_batchnorm=merge)
    got = input_relevance(model, x, r, comp).flatten()
    m, _ = dense(conv, (2, 5, 5))
    a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    a_rows = a.repeat_interleave(25)
    if merge:
        want = alphabeta_matrix(a_rows[:, None] * m, x.flatten(), r.flatten())
    else:
        mb, bb = dense(bn, (3, 5, 5))
        with torch.no_grad():
            h = conv(x).flatten()
        r_mid = eps_matrix(mb, bb, h, r.flatten())
        want = alphabeta_matrix(m, x.flatten(), r_mid)
    assert torch.allclose(got, want, atol=1e-9, rtol=1e-7)


def test_conv_batchnorm_epsilon_merge_equals_separate():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1).double(), _bn(3, 8))
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    r = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    tiny = Epsilon(1e-12)  # equal up to the stabiliser's effect where the conv output is near zero
    merged = input_relevance(model, x, r, Composite(conv=tiny, batchnorm=tiny, merge_batchnorm=True))
    separate = input_relevance(model, x, r, Composite(conv=tiny, batchnorm=tiny, merge_batchnorm=False))
    assert torch.allclose(merged, separate, atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AdaptiveAvgPool2d((2, 3))])
def test_avgpool_matches_dense_matrix_and_conserves(pool):
    torch.manual_seed(9)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        r = torch.randn(pool(x).shape, dtype=torch.float64)
    m, b = dense(pool, (3, 6, 6))
    assert torch.all(b == 0)
    got = input_relevance(nn.Sequential(pool), x, r, "epsilon")
    for n in range(2):
        assert torch.allclose(got[n].flatten(), eps_matrix(m, b, x[n].flatten(), r[n].flatten()), atol=1e-9)
    exact = input_relevance(nn.Sequential(pool), x, r, Composite(pooling=Epsilon(1e-12)))
    assert torch.allclose(exact.sum(dim=(1, 2, 3)), r.sum(dim=(1, 2, 3)), atol=1e-8)  # no bias: conserved


class AddModel(nn.Module):
    """Two branches summed by the residual Add module."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1, bias=False)
        self.b = nn.Conv2d(2, 3, 1, bias=False)
        self.add = Add()

    def forward(self, x: Tensor) -> Tensor:
        return self.add(self.a(x), self.b(x))


def test_residual_add_splits_relevance_in_proportion():
    torch.manual_seed(10)
    model = AddModel().double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    r = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    res = lrp_relevance(model, x, ["a", "b", "add"], start=r)
    ra, rb, rs = res.at("a"), res.at("b"), res.at("add")
    ha, hb = res.activations["a"][0], res.activations["b"][0]
    s = ha + hb
    stab = s + EPS * torch.where(s >= 0, 1.0, -1.0).double()
    assert torch.allclose(rs, r)
    assert torch.allclose(ra, ha / stab * r, atol=1e-9)
    assert torch.allclose(rb, hb / stab * r, atol=1e-9)
    # split, never duplicated: the two shares add up to the output relevance (times s/(s+ε), ≈ 1)
    assert torch.allclose(ra + rb, s / stab * r, atol=1e-9)
    assert not torch.allclose(ra, r) and not torch.allclose(rb, r)  # a plain gradient would copy R to both


# ---------------------------------------------------------------------------
# a whole tiny CNN with a residual add, propagated by hand
# ---------------------------------------------------------------------------
class TinyRes(nn.Module):
    """conv(3→4) → ReLU → conv(4→4) → ReLU6 → add(·, skip) → GAP → Flatten → Dropout → FC(4→5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU6()
        self.add = Add()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        a1 = self.relu1(self.conv1(x))
        a2 = self.relu2(self.conv2(a1))
        return self.fc(self.dropout(self.flatten(self.pool(self.add(a2, a1)))))


def make_tiny_res(zero_bias: bool = False) -> TinyRes:
    torch.manual_seed(11)
    model = TinyRes().double().eval()
    if zero_bias:
        with torch.no_grad():
            for m in (model.conv1, model.conv2, model.fc):
                m.bias.zero_()
    return model


def hand_relevance(model: TinyRes, x1: Tensor, r_out: Tensor, rules: str) -> dict[str, Tensor]:
    """Propagate relevance through TinyRes for ONE sample ``x1`` [3, H, W] with explicit matrices."""
    h, w = x1.shape[-2:]
    m1, b1 = dense(model.conv1, (3, h, w))
    m2, b2 = dense(model.conv2, (4, h, w))
    mp, bp = dense(model.pool, (4, h, w))
    mf, bf = model.fc.weight.detach(), model.fc.bias.detach()
    x = x1.flatten()
    z1 = m1 @ x + b1
    a1 = z1.clamp(min=0)
    z2 = m2 @ a1 + b2
    a2 = z2.clamp(0, 6)
    s = a2 + a1
    g = mp @ s
    lin = (lambda m, b, xx, r: alphabeta_matrix(m, xx, r)) if rules == "zplus" else eps_matrix
    r_g = lin(mf, bf, g, r_out)
    r_s = eps_matrix(mp, bp, s, r_g)  # pooling: ε in every composite
    stab = s + EPS * torch.where(s >= 0, 1.0, -1.0).double()
    r_a2, r_skip = a2 / stab * r_s, a1 / stab * r_s  # residual split (ε)
    r_z2 = r_a2  # ReLU6: pass-through
    r_a1 = lin(m2, b2, a1, r_z2) + r_skip
    r_z1 = r_a1  # ReLU: pass-through
    r_x = lin(m1, b1, x, r_z1)
    return {"fc_in": r_g, "add": r_s, "relu2": r_a2, "relu1": r_a1, "input": r_x}


@pytest.mark.parametrize("rules", ["epsilon", "zplus"])
def test_tiny_residual_cnn_matches_hand_propagation(rules):
    model = make_tiny_res()
    torch.manual_seed(12)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    r0 = start_relevance(out, None, "logit")
    res = lrp_relevance(model, x, ["flatten", "add", "relu2", "relu1"], rules=rules, start="logit", input_relevance=True)
    assert torch.allclose(res.start, r0)
    for n in range(2):
        want = hand_relevance(model, x[n], r0[n], rules)
        assert torch.allclose(res.at("flatten")[n], want["fc_in"], atol=1e-9, rtol=1e-7)
        assert torch.allclose(res.at("add")[n].flatten(), want["add"], atol=1e-9, rtol=1e-7)
        assert torch.allclose(res.at("relu2")[n].flatten(), want["relu2"], atol=1e-9, rtol=1e-7)
        assert torch.allclose(res.at("relu1")[n].flatten(), want["relu1"], atol=1e-9, rtol=1e-7)
        assert res.input_relevance is not None
        assert torch.allclose(res.input_relevance[n].flatten(), want["input"], atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------------------
# conservation
# ---------------------------------------------------------------------------
def test_conservation_without_biases_at_every_layer():
    model = make_tiny_res(zero_bias=True)
    torch.manual_seed(13)
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    comp = Composite(linear=Epsilon(1e-12), conv=Epsilon(1e-12), pooling=Epsilon(1e-12), add=Epsilon(1e-12))
    res = lrp_relevance(model, x, ["flatten", "add", "relu1", "conv1"], rules=comp, start="one", input_relevance=True)
    total = res.start.sum(1)
    assert torch.allclose(total, torch.ones(3, dtype=torch.float64))
    for name in ("flatten", "add", "relu1", "conv1"):
        assert torch.allclose(res.at(name).flatten(1).sum(1), total, atol=1e-8), name
    assert res.input_relevance is not None
    assert torch.allclose(res.input_relevance.flatten(1).sum(1), total, atol=1e-8)


def test_bias_absorbs_the_share_the_formula_says():
    """At the FC input: Σ_i R_i = Σ_j (z_j − b_j)/z_j · R_j (ε → 0)."""
    model = make_tiny_res()
    torch.manual_seed(14)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    comp = Composite(linear=Epsilon(1e-12), conv=Epsilon(1e-12))
    res = lrp_relevance(model, x, ["flatten"], rules=comp, start="one")
    z = res.output.gather(1, res.output.argmax(1, keepdim=True)).squeeze(1)
    b = model.fc.bias.detach()[res.output.argmax(1)]
    got = res.at("flatten").sum(1)
    assert torch.allclose(got, 1 - b / z, atol=1e-9)
    assert not torch.allclose(got, torch.ones_like(got))  # the bias really takes a share


# ---------------------------------------------------------------------------
# start relevance, composites, errors, restoration
# ---------------------------------------------------------------------------
def test_start_relevance_kinds():
    out = torch.tensor([[1.0, 3.0, -2.0], [0.5, -1.0, 2.5]])
    assert torch.equal(start_relevance(out, None, "logit"), torch.tensor([[0, 3.0, 0], [0, 0, 2.5]]))
    assert torch.equal(start_relevance(out, 0, "one"), torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    c = start_relevance(out, [1, 2], "contrastive")
    assert torch.allclose(c, torch.tensor([[-1 / 3, 2 / 3, -1 / 3], [-1 / 3, -1 / 3, 2 / 3]]))
    with pytest.raises(TargetError, match="3 classes"):
        start_relevance(out, [1, 2, 0], "one")
    with pytest.raises(ValueError):
        start_relevance(out, 7, "one")


def test_composites_by_name():
    assert isinstance(get_composite("epsilon").conv, Epsilon)
    ep = get_composite("epsilon-plus")
    assert isinstance(ep.conv, ZPlus) and isinstance(ep.linear, Epsilon)
    assert isinstance(get_composite("alpha1beta0").linear, ZPlus)
    with pytest.raises(ModelError, match="valid"):
        get_composite("nonsense")
    with pytest.raises(ValueError):
        AlphaBeta(2.0, 0.5)


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.scale = nn.Parameter(torch.ones(1))
        self.inner = nn.Sequential(nn.LSTM(4, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * self.scale


def test_unknown_parametrised_modules_raise_with_their_types():
    with pytest.raises(LRPUnsupportedError) as info:
        LRP(WithLSTM())
    msg = str(info.value)
    assert "LSTM" in msg and "WithLSTM" in msg


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def test_restores_hooks_flags_and_never_touches_grad():
    model = make_tiny_res()
    model.train()
    model.conv2.weight.requires_grad_(False)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    lrp_relevance(model, x, ["relu1"], rules="zplus")
    assert no_hooks(model)
    assert model.training and model.dropout.training
    assert model.relu1.inplace is True
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True, True, True]
    assert all(p.grad is None for p in model.parameters())
    # and after an exception inside the context
    with pytest.raises(RuntimeError, match="boom"), LRP(model) as lrp:
        lrp.relevance(x, ["relu1"])
        raise RuntimeError("boom")
    assert no_hooks(model) and model.training and model.relu1.inplace
    assert all(p.grad is None for p in model.parameters())


def test_wrong_layer_and_inference_mode():
    model = make_tiny_res()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    with pytest.raises(KeyError, match="relu1"):
        lrp_relevance(model, x, ["relu11"])
    with torch.inference_mode(), pytest.raises(InferenceModeError):
        lrp_relevance(model, x, ["relu1"])
    assert no_hooks(model)


def test_runs_under_no_grad_and_batch_equals_single():
    model = make_tiny_res()
    torch.manual_seed(15)
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        batch = lrp_relevance(model, x, ["relu1"], rules="epsilon-plus").at("relu1")
    single = torch.cat([lrp_relevance(model, x[i : i + 1], ["relu1"], rules="epsilon-plus").at("relu1") for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-10)


# ---------------------------------------------------------------------------
# the real EfficientNet-Lite0
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coffee_batch(lite0, photos):
    return lite0.prepare([photos["coffee"]])


@pytest.mark.slow
def test_lite0_head_relevance_is_one_minus_bias_share(lite0, coffee_batch):
    """Relevance 1 on the top class: at the head output Σ R = 1 − b_fc/z (the FC bias absorbs the rest)."""
    model = lite0.model
    res = lrp_relevance(model, coffee_batch, ["head", "pool", "blocks.15"], rules="epsilon", start="one")
    top = int(res.output.argmax(1))
    assert lite0.class_names[top] == "espresso"
    z = float(res.output[0, top])
    b = float(model.fc.bias[top].detach())
    head = float(res.at("head").sum())
    assert head == pytest.approx(1 - b / z, abs=1e-4)
    assert 0.98 < head < 1.0
    assert float(res.at("pool").sum()) == pytest.approx(head, abs=1e-5)  # pooling conserves
    # below the head conv the BN shifts take (signed) shares: not conserved, but finite and nonzero
    below = float(res.at("blocks.15").sum())
    assert torch.isfinite(res.at("blocks.15")).all() and abs(below) > 0.1
    assert no_hooks(model) and all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_lite0_residual_adds_split_and_zplus_never_creates_relevance(lite0, coffee_batch):
    model = lite0.model
    layers = ["head", "blocks.15", "blocks.14", "blocks.13", "blocks.12.skip", "blocks.12.project", "blocks.11"]
    res = lrp_relevance(model, coffee_batch, layers, rules="zplus", start="one")
    out_r = res.at("blocks.12.skip")
    h = res.activations["blocks.12.project"][0]
    x = res.activations["blocks.11"][0]
    s = h + x
    stab = s + EPS * torch.where(s >= 0, 1.0, -1.0)
    # the residual branch gets h/(h+x) of the relevance, the skip gets the rest: split, not duplicated
    assert torch.allclose(res.at("blocks.12.project"), h / stab * out_r, atol=1e-6, rtol=1e-4)
    assert float(res.at("blocks.12.project").sum()) < 0.5 * float(out_r.sum())
    # z⁺ ignores biases: the FC, pooling and the 1×1 head conv (BN merged) conserve the unit relevance
    assert float(res.at("head").sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(res.at("blocks.15").sum()) == pytest.approx(1.0, abs=1e-3)
    # deeper, relevance only vanishes (depthwise channels whose merged weights are all ≤ 0 have z⁺ = 0)
    sums = [float(res.at(n).sum()) for n in ["blocks.15", "blocks.14", "blocks.13", "blocks.12.skip", "blocks.11"]]
    assert all(b <= a + 1e-4 for a, b in itertools.pairwise(sums)), sums
    assert sums[-1] > 0.05
    # R ≥ 0 stays ≥ 0 under z⁺ (the ε split at an add can give a negative share to an input of opposite sign)
    assert all(float(res.at(n).min()) >= -1e-7 for n in ["head", "blocks.15", "blocks.14"])
