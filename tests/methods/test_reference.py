"""Reference tests: every CAM method against a slow, explicit re-implementation on small CNNs.

Gradients are computed here independently of the engine: the network is split by hand at the
explained layer (functional ops on the module's weights), the activation ``A`` is made a leaf, and
``torch.autograd.grad`` gives ``∂y/∂A``. The formulas are then evaluated with explicit Python loops.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurelens.api import Explainer
from featurelens.errors import MethodError, NoClassifierHeadError
from featurelens.methods import get_method

ATOL, RTOL = 1e-5, 1e-4


def split_forward(model: nn.Module, x: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """Manual forward of TinyCNN split at ``layer``: returns (leaf activation A, logits from A)."""
    w1, b1 = model.conv1.weight.detach(), model.conv1.bias.detach()
    w2, b2 = model.conv2.weight.detach(), model.conv2.bias.detach()
    wf, bf = model.fc.weight.detach(), model.fc.bias.detach()
    with torch.no_grad():
        a1 = torch.relu(F.conv2d(x, w1, b1, padding=1))
        a2 = torch.relu(F.conv2d(a1, w2, b2, padding=1))
    if layer == "relu1":
        a = a1.clone().requires_grad_(True)
        logits = F.linear(torch.relu(F.conv2d(a, w2, b2, padding=1)).mean(dim=(2, 3)), wf, bf)
    elif layer == "relu2":
        a = a2.clone().requires_grad_(True)
        logits = F.linear(a.mean(dim=(2, 3)), wf, bf)
    else:  # pragma: no cover
        raise ValueError(layer)
    return a, logits


def reference_state(model: nn.Module, x: Tensor, layer: str) -> tuple[list, list, list[int], Tensor]:
    """(A as nested lists, ∂y/∂A as nested lists, predicted classes, A tensor) with y = logit of the top class."""
    a, logits = split_forward(model, x, layer)
    classes = logits.argmax(dim=1)
    score = logits.gather(1, classes[:, None]).sum()
    (g,) = torch.autograd.grad(score, a)
    return a.detach().double().tolist(), g.double().tolist(), classes.tolist(), a.detach()


def combine(a: list, w: list[list[float]]) -> Tensor:
    """ReLU(Σ_k w[b][k] · A[b][k]) with explicit loops."""
    out = []
    for b in range(len(a)):
        rows = []
        for i in range(len(a[b][0])):
            row = []
            for j in range(len(a[b][0][0])):
                s = sum(w[b][k] * a[b][k][i][j] for k in range(len(a[b])))
                row.append(max(s, 0.0))
            rows.append(row)
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64)


def spatial_sum(m: list[list[float]]) -> float:
    return sum(v for row in m for v in row)


def ref_gradcam(a, g, model, classes):
    w = [
        [spatial_sum(g[b][k]) / (len(g[b][k]) * len(g[b][k][0])) for k in range(len(g[b]))]
        for b in range(len(g))
    ]
    return combine(a, w), torch.tensor(w, dtype=torch.float64)


def ref_gradcampp(a, g, model, classes):
    w = []
    for b in range(len(g)):
        wb = []
        for k in range(len(g[b])):
            s = spatial_sum(a[b][k])
            total = 0.0
            for i in range(len(g[b][k])):
                for j in range(len(g[b][k][0])):
                    gij = g[b][k][i][j]
                    denom = 2 * gij**2 + s * gij**3
                    alpha = gij**2 / denom if denom != 0 else 0.0
                    total += alpha * max(gij, 0.0)
            wb.append(total)
        w.append(wb)
    return combine(a, w), torch.tensor(w, dtype=torch.float64)


def ref_xgradcam(a, g, model, classes):
    w = []
    for b in range(len(g)):
        wb = []
        for k in range(len(g[b])):
            s = spatial_sum(a[b][k])
            num = sum(
                a[b][k][i][j] * g[b][k][i][j] for i in range(len(a[b][k])) for j in range(len(a[b][k][0]))
            )
            wb.append(num / s if s != 0 else 0.0)
        w.append(wb)
    return combine(a, w), torch.tensor(w, dtype=torch.float64)


def ref_cam(a, g, model, classes):
    fc = model.fc.weight.detach().double().tolist()
    w = [[fc[classes[b]][k] for k in range(len(a[b]))] for b in range(len(a))]
    return combine(a, w), torch.tensor(w, dtype=torch.float64)


def _elementwise(a, g, gate):
    out = []
    for b in range(len(a)):
        rows = []
        for i in range(len(a[b][0])):
            rows.append(
                [
                    max(sum(gate(g[b][k][i][j]) * a[b][k][i][j] for k in range(len(a[b]))), 0.0)
                    for j in range(len(a[b][0][0]))
                ]
            )
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64)


def ref_layercam(a, g, model, classes):
    return _elementwise(a, g, lambda v: max(v, 0.0)), None


def ref_hirescam(a, g, model, classes):
    return _elementwise(a, g, lambda v: v), None


REFERENCES = {
    "gradcam": ref_gradcam,
    "gradcampp": ref_gradcampp,
    "xgradcam": ref_xgradcam,
    "layercam": ref_layercam,
    "hirescam": ref_hirescam,
}


@pytest.mark.parametrize("layer", ["relu1", "relu2"])
@pytest.mark.parametrize("method", sorted(REFERENCES))
def test_gradient_methods_match_explicit_formula(tiny_cnn, tiny_input, method, layer):
    a, g, classes, _ = reference_state(tiny_cnn, tiny_input, layer)
    ref_map, ref_w = REFERENCES[method](a, g, tiny_cnn, classes)
    exp = Explainer(tiny_cnn, layer).explain(tiny_input, method)
    raw = exp.raw_maps[layer].double()
    assert raw.shape == ref_map.shape
    assert ref_map.abs().max() > 0, "degenerate reference (all-zero map) would not test anything"
    assert torch.allclose(raw, ref_map, atol=ATOL, rtol=RTOL)
    if ref_w is None:
        assert exp.weights[layer] is None
    else:
        assert torch.allclose(exp.weights[layer].double(), ref_w, atol=ATOL, rtol=RTOL)
    assert exp.target_indices.tolist() == classes


def test_cam_matches_explicit_formula(tiny_cnn, tiny_input):
    a, g, classes, _ = reference_state(tiny_cnn, tiny_input, "relu2")
    ref_map, ref_w = ref_cam(a, g, tiny_cnn, classes)
    exp = Explainer(tiny_cnn, "relu2").explain(tiny_input, "cam")
    assert torch.allclose(exp.raw_maps["relu2"].double(), ref_map, atol=ATOL, rtol=RTOL)
    assert torch.allclose(exp.weights["relu2"].double(), ref_w, atol=ATOL, rtol=RTOL)


def test_cam_explicit_class_target(tiny_cnn, tiny_input):
    a, g, _, _ = reference_state(tiny_cnn, tiny_input, "relu2")
    classes = [4, 0, 2]
    ref_map, _ = ref_cam(a, g, tiny_cnn, classes)
    exp = Explainer(tiny_cnn, "relu2").explain(tiny_input, "cam", target=classes)
    assert torch.allclose(exp.raw_maps["relu2"].double(), ref_map, atol=ATOL, rtol=RTOL)


def test_cam_equals_gradcam_times_hw_on_gap_fc_head(tiny_cnn, tiny_input):
    """For A → GAP → FC, ∂y_c/∂A_k = W[c, k]/(h·w): Grad-CAM weights are CAM weights / (h·w)."""
    ex = Explainer(tiny_cnn, "relu2").explain(tiny_input, ["cam", "gradcam"])
    h, w = ex["cam"].raw_maps["relu2"].shape[-2:]
    assert torch.allclose(ex["gradcam"].weights["relu2"] * h * w, ex["cam"].weights["relu2"], atol=1e-6)


def test_cam_without_matching_fc_raises(tiny_cnn, tiny_input):
    # relu1 has 6 channels; the only Linear reads 8 → no classifier head for this layer
    with pytest.raises(NoClassifierHeadError, match="6 pooled channels"):
        Explainer(tiny_cnn, "relu1").explain(tiny_input, "cam")
    no_fc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Softmax(1))
    with pytest.raises(NoClassifierHeadError):
        Explainer(no_fc, "1").explain(tiny_input, "cam")


def test_cam_needs_a_class_target(tiny_cnn, tiny_input):
    with pytest.raises(MethodError, match="class target"):
        Explainer(tiny_cnn, "relu2").explain(tiny_input, "cam", target=lambda out: out.sum(1))


# ---------------------------------------------------------------------------
# Score-CAM on a strided CNN (so that the masks really are upsampled)
# ---------------------------------------------------------------------------
class StridedCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 7, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(7, 4)

    def forward(self, x):
        return self.fc(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))).flatten(1))


@pytest.fixture
def strided():
    torch.manual_seed(3)
    model = StridedCNN().eval()
    with torch.no_grad():
        model.conv2.bias[2] = -100.0  # channel 2 is dead: a constant (all-zero) activation map
    return model


def ref_scorecam(model, x, layer, classes, channels=None):
    """Explicit Score-CAM: one masked forward per (sample, channel)."""
    acts = {}
    handle = getattr(model, layer).register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    a = acts["a"]
    size = x.shape[-2:]
    weights = torch.zeros(a.shape[:2], dtype=torch.float64)
    for b in range(a.shape[0]):
        for k in range(a.shape[1]):
            if channels is not None and k not in channels[b]:
                continue
            up = F.interpolate(a[b, k][None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            lo, hi = float(up.min()), float(up.max())
            mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
            with torch.no_grad():
                probs = torch.softmax(model(x[b : b + 1] * mask), dim=1)
            weights[b, k] = float(probs[0, classes[b]])
    al = a.double().tolist()
    return combine(al, weights.tolist()), weights


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_scorecam_exact_matches_explicit_loop(strided, batch_size):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 13, 11)
    classes = strided(x).argmax(1).tolist()
    ref_map, ref_w = ref_scorecam(strided, x, "relu2", classes)
    exp = Explainer(strided, "relu2").explain(
        x, "scorecam", method_options={"scorecam": {"batch_size": batch_size}}
    )
    assert exp.raw_maps["relu2"].shape == (2, 7, 6)
    assert torch.allclose(exp.weights["relu2"].double(), ref_w, atol=1e-6)
    assert torch.allclose(exp.raw_maps["relu2"].double(), ref_map, atol=ATOL, rtol=RTOL)


def test_scorecam_fixed_class_target(strided):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 13, 11)
    ref_map, ref_w = ref_scorecam(strided, x, "relu1", [3, 1])
    exp = Explainer(strided, "relu1").explain(x, "scorecam", target=[3, 1])
    assert torch.allclose(exp.weights["relu1"].double(), ref_w, atol=1e-6)
    assert torch.allclose(exp.raw_maps["relu1"].double(), ref_map, atol=ATOL, rtol=RTOL)


def test_scorecam_fast_mode_activation_mass(strided):
    torch.manual_seed(6)
    x = torch.randn(2, 3, 13, 11)
    classes = strided(x).argmax(1).tolist()
    acts = {}
    h = strided.relu2.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    with torch.no_grad():
        strided(x)
    h.remove()
    mass = acts["a"].sum(dim=(2, 3)).tolist()
    top = [sorted(range(7), key=lambda k: -mass[b][k])[:3] for b in range(2)]
    ref_map, ref_w = ref_scorecam(strided, x, "relu2", classes, channels=top)
    exp = Explainer(strided, "relu2").explain(
        x, "scorecam", method_options={"scorecam": {"top_n": 3, "batch_size": 2, "select": "activation"}}
    )
    w = exp.weights["relu2"].double()
    assert [(w[b] != 0).nonzero().flatten().tolist() for b in range(2)] == [sorted(t) for t in top]
    assert torch.allclose(w, ref_w, atol=1e-6)
    assert torch.allclose(exp.raw_maps["relu2"].double(), ref_map, atol=ATOL, rtol=RTOL)


def test_scorecam_fast_mode_gradient_rank(strided):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 13, 11)
    classes = strided(x).argmax(1).tolist()
    # Grad-CAM weight of relu2 for a GAP+FC head is W[c, k] / (h·w): rank by the FC row
    wfc = strided.fc.weight.detach()
    top = [wfc[c].topk(2).indices.tolist() for c in classes]
    ref_map, ref_w = ref_scorecam(strided, x, "relu2", classes, channels=top)
    method = get_method("score-cam", top_n=2, select="gradient")
    assert method.needs_gradients
    exp = Explainer(strided, "relu2").explain(x, method)
    assert torch.allclose(exp.weights["relu2"].double(), ref_w, atol=1e-6)
    assert torch.allclose(exp.raw_maps["relu2"].double(), ref_map, atol=ATOL, rtol=RTOL)


def test_scorecam_custom_callable_target(strided):
    """Without class indices the target callable itself scores the masked inputs."""
    torch.manual_seed(8)
    x = torch.randn(1, 3, 13, 11)
    target = lambda out: out[:, 1] - out[:, 0]  # noqa: E731
    exp = Explainer(strided, "relu2").explain(x, "scorecam", target=target)
    acts = {}
    h = strided.relu2.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    with torch.no_grad():
        strided(x)
    h.remove()
    for k in range(7):
        up = F.interpolate(acts["a"][0, k][None, None], size=(13, 11), mode="bilinear")[0, 0]
        span = up.max() - up.min()
        mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
        with torch.no_grad():
            expected = target(strided(x * mask))[0]
        assert torch.allclose(exp.weights["relu2"][0, k], expected, atol=1e-5)


@pytest.mark.parametrize(
    "options", [{"batch_size": 0}, {"top_n": 0}, {"select": "random"}, {"batch_size": 2.5}]
)
def test_scorecam_bad_options(options):
    with pytest.raises(MethodError):
        get_method("scorecam", **options)


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("Grad-CAM++", "gradcampp"),
        ("XGrad_CAM", "xgradcam"),
        ("layer-cam", "layercam"),
        ("HiResCAM", "hirescam"),
        ("Score-CAM", "scorecam"),
        ("CAM", "cam"),
        ("grad-cam", "gradcam"),
    ],
)
def test_method_lookup_by_alias(alias, name):
    assert get_method(alias).name == name


def test_scorecam_fast_flag_and_top_n_beyond_channels(strided):
    from featurelens.methods.scorecam import DEFAULT_TOP_N

    assert get_method("scorecam", fast=True).top_n == DEFAULT_TOP_N
    assert get_method("scorecam", fast=True, top_n=5).top_n == 5
    assert get_method("scorecam").top_n is None and not get_method("scorecam").needs_gradients
    torch.manual_seed(9)
    x = torch.randn(2, 3, 13, 11)
    ex = Explainer(strided, "relu2")
    exact = ex.explain(x, "scorecam")
    wide = ex.explain(x, "scorecam", method_options={"scorecam": {"top_n": 50}})  # more than 7 channels
    assert torch.allclose(exact.weights["relu2"], wide.weights["relu2"])


def test_scorecam_fast_mode_variance_rank_is_default(strided):
    torch.manual_seed(10)
    x = torch.randn(2, 3, 13, 11)
    classes = strided(x).argmax(1).tolist()
    acts = {}
    h = strided.relu2.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    with torch.no_grad():
        strided(x)
    h.remove()
    a = acts["a"].double().tolist()
    top = []
    for b in range(2):
        variances = []
        for k in range(7):
            vals = [v for row in a[b][k] for v in row]
            mean = sum(vals) / len(vals)
            variances.append(sum((v - mean) ** 2 for v in vals) / len(vals))
        top.append(sorted(range(7), key=lambda k, v=variances: -v[k])[:4])
    ref_map, ref_w = ref_scorecam(strided, x, "relu2", classes, channels=top)
    method = get_method("scorecam", top_n=4)
    assert method.select == "variance"
    exp = Explainer(strided, "relu2").explain(x, method)
    assert torch.allclose(exp.weights["relu2"].double(), ref_w, atol=1e-6)
    assert torch.allclose(exp.raw_maps["relu2"].double(), ref_map, atol=ATOL, rtol=RTOL)


def test_channels_last_context_restores_the_model_tensors(strided):
    from featurelens.methods.base import channels_last

    params = {n: (p, p.data_ptr(), p.stride()) for n, p in strided.named_parameters()}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = strided(x)
        with channels_last(strided) as fmt:
            inside = strided(x.contiguous(memory_format=fmt))
    assert fmt == torch.channels_last and torch.allclose(before, inside, atol=1e-5)
    for n, p in strided.named_parameters():
        assert p is params[n][0] and p.data_ptr() == params[n][1] and p.stride() == params[n][2]


@pytest.mark.parametrize("name", ["scorecam", "sscam", "iscam"])
def test_score_family_same_maps_with_and_without_channels_last_and_across_images(strided, name):
    x = torch.randn(3, 3, 16, 16)
    opts = {"num_samples": 2} if name != "scorecam" else {}
    fast = Explainer(strided, "relu1").explain(x, get_method(name, batch_size=5, **opts)).map
    slow = Explainer(strided, "relu1").explain(x, get_method(name, batch_size=5, channels_last=False, **opts)).map
    alone = torch.cat([Explainer(strided, "relu1").explain(x[i:i + 1], get_method(name, batch_size=5, **opts)).map
                       for i in range(3)])
    assert torch.allclose(fast, slow, atol=1e-5) and torch.allclose(fast, alone, atol=1e-5)
