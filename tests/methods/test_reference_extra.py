"""Reference tests of SS-CAM, IS-CAM, Smooth Grad-CAM++, ShapleyCAM and Finer-CAM against explicit,
slow re-implementations (one masked forward per channel, a hand-split network, a full Hessian)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_reference import ATOL, RTOL, StridedCNN, combine, split_forward

from featurelens.api import Explainer
from featurelens.errors import MethodError
from featurelens.methods import get_method


@pytest.fixture
def strided():
    torch.manual_seed(3)
    model = StridedCNN().eval()
    with torch.no_grad():
        model.conv2.bias[2] = -100.0  # a dead channel: constant activation
    return model


def activation(model, x, layer):
    acts = {}
    h = getattr(model, layer).register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return acts["a"]


def mask_of(a_bk, size):
    up = F.interpolate(a_bk[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)


def ref_score_variant(model, x, layer, score_of_mask):
    a = activation(model, x, layer)
    classes = model(x).argmax(1).tolist()
    w = torch.zeros(a.shape[:2], dtype=torch.float64)
    for b in range(a.shape[0]):
        for k in range(a.shape[1]):
            w[b, k] = score_of_mask(x[b : b + 1], mask_of(a[b, k], x.shape[-2:]), classes[b])
    return combine(a.double().tolist(), w.tolist()), w


def prob(model, x, c):
    with torch.no_grad():
        return float(torch.softmax(model(x), dim=1)[0, c])


@pytest.mark.parametrize("batch_size", [1, 4])
def test_sscam_matches_noisy_mask_loop(strided, batch_size):
    torch.manual_seed(11)
    x = torch.randn(2, 3, 13, 11)
    n, std = 5, 0.7
    noise = torch.randn((n, 13, 11), generator=torch.Generator().manual_seed(3)) * std

    def score(xb, mask, c):
        return sum(prob(strided, xb * (mask + noise[i]), c) for i in range(n)) / n

    ref_map, ref_w = ref_score_variant(strided, x, "relu2", score)
    method = get_method("ss-cam", num_samples=n, std=std, seed=3, batch_size=batch_size)
    exp = Explainer(strided, "relu2").explain(x, method)
    assert torch.allclose(exp.weights["relu2"].double(), ref_w, atol=1e-6)
    assert torch.allclose(exp.raw_maps["relu2"].double(), ref_map, atol=ATOL, rtol=RTOL)
    plain = Explainer(strided, "relu2").explain(x, "scorecam")
    assert not torch.allclose(plain.weights["relu2"], exp.weights["relu2"], atol=1e-4)  # noise matters
    still = Explainer(strided, "relu2").explain(x, get_method("sscam", num_samples=3, std=0.0))
    assert torch.allclose(still.weights["relu2"], plain.weights["relu2"], atol=1e-6)  # σ = 0 is Score-CAM


def test_iscam_matches_integrated_path_loop(strided):
    torch.manual_seed(12)
    x = torch.randn(2, 3, 13, 11)
    n = 4

    def score(xb, mask, c):
        return sum(prob(strided, (i / n) * xb * mask, c) for i in range(1, n + 1)) / n

    ref_map, ref_w = ref_score_variant(strided, x, "relu1", score)
    exp = Explainer(strided, "relu1").explain(x, get_method("IS-CAM", num_samples=n, batch_size=2))
    assert torch.allclose(exp.weights["relu1"].double(), ref_w, atol=1e-6)
    assert torch.allclose(exp.raw_maps["relu1"].double(), ref_map, atol=ATOL, rtol=RTOL)
    one = Explainer(strided, "relu1").explain(x, get_method("iscam", num_samples=1))
    plain = Explainer(strided, "relu1").explain(x, "scorecam")
    assert torch.allclose(one.weights["relu1"], plain.weights["relu1"], atol=1e-6)  # N = 1 is Score-CAM


@pytest.mark.parametrize("layer", ["relu1", "relu2"])
def test_smoothgradcampp_matches_averaged_derivatives(tiny_cnn, tiny_input, layer):
    n, std, seed = 3, 0.4, 5
    classes = tiny_cnn(tiny_input).argmax(1).tolist()
    eps = torch.randn((n, *tiny_input.shape[1:]), generator=torch.Generator().manual_seed(seed)) * std
    ref_w = []
    for b in range(tiny_input.shape[0]):
        grads = []
        for i in range(n):
            a, logits = split_forward(tiny_cnn, tiny_input[b : b + 1] + eps[i : i + 1], layer)
            (g,) = torch.autograd.grad(logits[0, classes[b]], a)
            grads.append(g[0].double())
        clean, _ = split_forward(tiny_cnn, tiny_input[b : b + 1], layer)
        a0 = clean.detach()[0].double()
        wb = []
        for k in range(a0.shape[0]):
            s = float(a0[k].sum())
            total = 0.0
            for i in range(a0.shape[1]):
                for j in range(a0.shape[2]):
                    d1 = sum(float(g[k, i, j]) for g in grads) / n
                    d2 = sum(float(g[k, i, j]) ** 2 for g in grads) / n
                    d3 = sum(float(g[k, i, j]) ** 3 for g in grads) / n
                    denom = 2 * d2 + s * d3
                    total += (d2 / denom if denom != 0 else 0.0) * max(d1, 0.0)
            wb.append(total)
        ref_w.append(wb)
    method = get_method("Smooth-Grad-CAM++", num_samples=n, std=std, seed=seed)
    exp = Explainer(tiny_cnn, layer).explain(tiny_input, method)
    assert torch.allclose(exp.weights[layer].double(), torch.tensor(ref_w, dtype=torch.float64), atol=1e-6, rtol=1e-4)
    a_all, _ = split_forward(tiny_cnn, tiny_input, layer)
    assert torch.allclose(
        exp.raw_maps[layer].double(), combine(a_all.detach().double().tolist(), ref_w), atol=ATOL, rtol=RTOL
    )
    zero = Explainer(tiny_cnn, layer).explain(tiny_input, get_method("smoothgradcampp", num_samples=2, std=0.0))
    pp = Explainer(tiny_cnn, layer).explain(tiny_input, "gradcampp")
    assert torch.allclose(zero.weights[layer], pp.weights[layer], atol=1e-5)  # σ = 0 is Grad-CAM++


@pytest.mark.parametrize("layer", ["relu1", "relu2"])
@pytest.mark.parametrize("rest", [True, False])
def test_shapleycam_matches_full_hessian(tiny_cnn, layer, rest):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 5)
    classes = tiny_cnn(x).argmax(1).tolist()
    ref_w = []
    for b in range(2):
        a0, _ = split_forward(tiny_cnn, x[b : b + 1], layer)
        a0 = a0.detach()

        def score(a, b=b):
            logits = _logits_from(tiny_cnn, a, layer)
            c = classes[b]
            return logits[0, c] + (torch.log_softmax(logits, dim=1)[0, c] if rest else 0)

        leaf = a0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(score(leaf), leaf)
        hess = torch.autograd.functional.hessian(score, a0).reshape(a0.numel(), a0.numel())
        hvp = (hess @ a0.flatten()).reshape(a0.shape)
        ref_w.append((g - 0.5 * hvp)[0].mean(dim=(1, 2)).double().tolist())
        if rest:
            assert hvp.abs().max() > 1e-6, "ReST must give a non-zero Hessian term"
    exp = Explainer(tiny_cnn, layer).explain(x, get_method("Shapley-CAM", rest=rest))
    assert torch.allclose(exp.weights[layer].double(), torch.tensor(ref_w, dtype=torch.float64), atol=1e-6, rtol=1e-4)
    if not rest:  # logits of a piecewise-linear network: no curvature, ShapleyCAM is Grad-CAM
        grad = Explainer(tiny_cnn, layer).explain(x, "gradcam")
        assert torch.allclose(exp.weights[layer], grad.weights[layer], atol=1e-6)


def _logits_from(model, a, layer):
    w2, b2 = model.conv2.weight.detach(), model.conv2.bias.detach()
    wf, bf = model.fc.weight.detach(), model.fc.bias.detach()
    if layer == "relu1":
        a = torch.relu(F.conv2d(a, w2, b2, padding=1))
    return F.linear(a.mean(dim=(2, 3)), wf, bf)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_finercam_matches_explicit_comparison_score(tiny_cnn, tiny_input, alpha):
    layer = "relu1"
    a, logits = split_forward(tiny_cnn, tiny_input, layer)
    rows = logits.detach().tolist()
    ref_w = []
    for b, row in enumerate(rows):
        c = max(range(len(row)), key=lambda j: row[j])
        others = sorted((j for j in range(len(row)) if j != c), key=lambda j: abs(row[j] - row[c]))
        similar = others[:3]
        leaf, lg = split_forward(tiny_cnn, tiny_input[b : b + 1], layer)
        p = torch.softmax(lg, dim=1)[0]
        s = sum(p[j] * (lg[0, c] - alpha * lg[0, j]) for j in similar) / sum(p[j] for j in similar)
        (g,) = torch.autograd.grad(s, leaf)
        ref_w.append(g[0].mean(dim=(1, 2)).double().tolist())
    exp = Explainer(tiny_cnn, layer).explain(tiny_input, get_method("Finer-CAM", alpha=alpha))
    assert torch.allclose(exp.weights[layer].double(), torch.tensor(ref_w, dtype=torch.float64), atol=1e-6, rtol=1e-4)
    assert torch.allclose(
        exp.raw_maps[layer].double(), combine(a.detach().double().tolist(), ref_w), atol=ATOL, rtol=RTOL
    )
    layercam = Explainer(tiny_cnn, layer).explain(tiny_input, get_method("finercam", base="layercam"))
    assert layercam.weights[layer] is None and layercam.raw_maps[layer].shape == (3, 10, 12)


def test_finercam_errors(tiny_cnn, tiny_input):
    with pytest.raises(MethodError, match="gradient method"):
        get_method("finercam", base="scorecam")
    with pytest.raises(MethodError, match="ranks"):
        get_method("finercam", comparisons=(0,))
    with pytest.raises(MethodError, match="class target"):
        Explainer(tiny_cnn, "relu2").explain(tiny_input, "finercam", target=lambda out: out.sum(1))


@pytest.mark.parametrize(
    ("name", "options"),
    [("sscam", {"num_samples": 0}), ("sscam", {"std": -1}), ("iscam", {"num_samples": 1.5}),
     ("smoothgradcampp", {"num_samples": 0}), ("smoothgradcampp", {"std": "big"})],
)
def test_bad_options(name, options):
    with pytest.raises(MethodError):
        get_method(name, **options)


def test_shapleycam_in_the_engine_pass_equals_its_own_pass(tiny_cnn, tiny_input):
    """Through the Explainer, ShapleyCAM takes g and H·A from the engine's forward (no second forward);
    called on a bare LayerState it runs its own. Both give the same weights, at two layers at once and
    next to a first-order method in the same call."""
    from featurelens.methods.base import LayerState, MethodContext

    calls = []
    handle = tiny_cnn.register_forward_hook(lambda *_: calls.append(1))
    try:
        both = Explainer(tiny_cnn, ["relu1", "relu2"]).explain(tiny_input, ["shapleycam", "gradcam"])
    finally:
        handle.remove()
    assert len(calls) == 1, "ShapleyCAM must not run a forward of its own inside the Explainer"
    out = tiny_cnn(tiny_input).detach()
    indices = out.argmax(1)
    ctx = MethodContext(tiny_cnn, tiny_input, lambda o: o.gather(1, indices[:, None])[:, 0], out,
                        out.max(1).values, indices)
    for layer in ("relu1", "relu2"):
        act, _ = split_forward(tiny_cnn, tiny_input, layer)
        own = get_method("shapleycam").weights(LayerState(layer, act.detach(), None), ctx)
        assert torch.allclose(both["shapleycam"].weights[layer], own, atol=1e-6, rtol=1e-5)
    alone = Explainer(tiny_cnn, "relu2").explain(tiny_input, "gradcam")
    assert torch.allclose(both["gradcam"].weights["relu2"], alone.weights["relu2"], atol=1e-7)
