"""Reference tests of the channel-weight methods added for pytorch-grad-cam parity: Eigen-CAM,
EigenGrad-CAM, KPCA-CAM, FEM, Grad-CAM element-wise and Ablation-CAM, each against an explicit,
slow re-implementation of its formula (Python loops, numpy eigen-decompositions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_reference import ATOL, RTOL, combine, reference_state
from torch import nn

from featurelens.api import Explainer
from featurelens.errors import MethodError
from featurelens.methods import get_method


def matrix(a_b: list) -> np.ndarray:
    """One sample's [K][h][w] nested list → the [h·w, K] matrix, positions as rows (explicit loops)."""
    k, h, w = len(a_b), len(a_b[0]), len(a_b[0][0])
    return np.array([[a_b[c][i][j] for c in range(k)] for i in range(h) for j in range(w)], dtype=np.float64)


def ref_eigen(nested: list) -> torch.Tensor:
    """ReLU(X̃ v₁) with v₁ the top eigenvector of the covariance X̃ᵀX̃ (not an SVD), Σ v₁ ≥ 0."""
    maps = []
    for a_b in nested:
        h, w = len(a_b[0]), len(a_b[0][0])
        x = matrix(a_b)
        xc = x - x.mean(axis=0)
        _, vecs = np.linalg.eigh(xc.T @ xc)
        v = vecs[:, -1]
        if v.sum() < 0:
            v = -v
        maps.append(np.maximum(xc @ v, 0).reshape(h, w))
    return torch.tensor(np.array(maps))


def product(a: list, g: list) -> list:
    return [
        [[[g[b][k][i][j] * a[b][k][i][j] for j in range(len(a[b][k][i]))] for i in range(len(a[b][k]))]
         for k in range(len(a[b]))]
        for b in range(len(a))
    ]


@pytest.mark.parametrize("layer", ["relu1", "relu2"])
def test_eigencam_and_eigengradcam_match_covariance_eigenvector(tiny_cnn, tiny_input, layer):
    a, g, _, _ = reference_state(tiny_cnn, tiny_input, layer)
    ex = Explainer(tiny_cnn, layer).explain(tiny_input, ["eigencam", "eigengradcam"])
    for name, data in (("eigencam", a), ("eigengradcam", product(a, g))):
        ref = ref_eigen(data)
        assert ref.max() > 0
        assert torch.allclose(ex[name].raw_maps[layer].double(), ref, atol=ATOL, rtol=RTOL), name
        assert ex[name].weights[layer] is None


def test_eigencam_sign_points_to_more_activation():
    """One hot spot in every channel: the map must peak there, not be its negative (or zero there)."""
    act = torch.zeros(1, 4, 5, 5)
    act[0, :, 2, 3] = torch.tensor([3.0, 2.0, 1.0, 4.0])
    act[0, 1, 0, 0] = 0.5
    from featurelens.methods.eigencam import first_component

    p = first_component(act)[0]
    assert p.argmax() == 2 * 5 + 3 and p.max() >= p.abs().max() - 1e-6


def sigmoid_kernel(x: np.ndarray, gamma: float, coef0: float) -> np.ndarray:
    n = x.shape[0]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = np.tanh(gamma * float(np.dot(x[i], x[j])) + coef0)
    return out


def ref_kpca(nested: list, gamma: float | None = None, coef0: float = 1.0) -> torch.Tensor:
    maps = []
    for a_b in nested:
        h, w = len(a_b[0]), len(a_b[0][0])
        x = matrix(a_b)
        xc = x - x.mean(axis=0)
        n, k = xc.shape
        kk = sigmoid_kernel(xc, 1.0 / k if gamma is None else gamma, coef0)
        one = np.full((n, n), 1.0 / n)
        kc = kk - one @ kk - kk @ one + one @ kk @ one
        vals, vecs = np.linalg.eigh(kc)
        score = vecs[:, -1] * np.sqrt(max(vals[-1], 0.0))
        if float(score @ xc.sum(axis=1)) < 0:
            score = -score
        maps.append(np.maximum(score, 0).reshape(h, w))
    return torch.tensor(np.array(maps))


@pytest.mark.parametrize("layer", ["relu1", "relu2"])
def test_kpcacam_matches_explicit_kernel_pca(tiny_cnn, tiny_input, layer):
    a, _, _, _ = reference_state(tiny_cnn, tiny_input, layer)
    exp = Explainer(tiny_cnn, layer).explain(tiny_input, "kpcacam")
    ref = ref_kpca(a)
    assert ref.max() > 0
    assert torch.allclose(exp.raw_maps[layer].double(), ref, atol=ATOL, rtol=RTOL)
    g = get_method("kpca-cam", gamma=0.3, coef0=0.5)
    assert torch.allclose(
        Explainer(tiny_cnn, layer).explain(tiny_input, g).raw_maps[layer].double(),
        ref_kpca(a, 0.3, 0.5), atol=ATOL, rtol=RTOL,
    )


def test_kpca_projection_equals_scikit_learn_up_to_sign(tiny_cnn, tiny_input):
    from sklearn.decomposition import KernelPCA

    from featurelens.methods.kpcacam import first_kernel_component

    a, _, _, at = reference_state(tiny_cnn, tiny_input, "relu2")
    ours = first_kernel_component(at.double())
    for b in range(len(a)):
        xc = matrix(a[b]) - matrix(a[b]).mean(axis=0)
        theirs = KernelPCA(n_components=1, kernel="sigmoid").fit_transform(xc)[:, 0]
        mine = ours[b].flatten().numpy()
        assert np.allclose(np.abs(mine), np.abs(theirs), atol=1e-6)


def test_kpcacam_linear_kernel_is_eigencam(tiny_cnn, tiny_input):
    ex = Explainer(tiny_cnn, "relu2")
    lin = ex.explain(tiny_input, get_method("kpcacam", kernel="linear"))
    eig = ex.explain(tiny_input, "eigencam")
    assert torch.allclose(lin.raw_maps["relu2"], eig.raw_maps["relu2"], atol=1e-5)


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
def test_fem_matches_k_sigma_rule(tiny_cnn, tiny_input, k):
    a, _, _, _ = reference_state(tiny_cnn, tiny_input, "relu1")
    w = []
    for a_b in a:
        wb = []
        for ch in a_b:
            vals = [v for row in ch for v in row]
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
            wb.append(sum(1 for v in vals if v > mean + k * std) / len(vals))
        w.append(wb)
    exp = Explainer(tiny_cnn, "relu1").explain(tiny_input, get_method("fem", k=k))
    assert any(0 < v < 1 for wb in w for v in wb)
    assert torch.allclose(exp.weights["relu1"].double(), torch.tensor(w, dtype=torch.float64))
    assert torch.allclose(exp.raw_maps["relu1"].double(), combine(a, w), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("layer", ["relu1", "relu2"])
def test_gradcam_elementwise_matches_loops(tiny_cnn, tiny_input, layer):
    a, g, _, _ = reference_state(tiny_cnn, tiny_input, layer)
    ref = torch.tensor(
        [
            [
                [sum(max(g[b][k][i][j] * a[b][k][i][j], 0.0) for k in range(len(a[b]))) for j in range(len(a[b][0][0]))]
                for i in range(len(a[b][0]))
            ]
            for b in range(len(a))
        ],
        dtype=torch.float64,
    )
    exp = Explainer(tiny_cnn, layer).explain(tiny_input, "grad-cam-elementwise")
    assert torch.allclose(exp.raw_maps[layer].double(), ref, atol=ATOL, rtol=RTOL)
    hires = Explainer(tiny_cnn, layer).explain(tiny_input, "hirescam").raw_maps[layer]
    assert (exp.raw_maps[layer] >= hires - 1e-6).all()  # Σ ReLU ≥ ReLU Σ


def ref_ablation(model: nn.Module, x: torch.Tensor, layer: str, classes: list[int]) -> torch.Tensor:
    """One full, unbatched forward per (sample, channel), the channel zeroed by a hook."""
    module = dict(model.named_modules())[layer]
    with torch.no_grad():
        acts = {}
        h = module.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
        logits = model(x)
        h.remove()
        channels = acts["a"].shape[1]
        w = torch.zeros(x.shape[0], channels, dtype=torch.float64)
        for b in range(x.shape[0]):
            y = float(logits[b, classes[b]])
            for c in range(channels):
                def zero(m, i, o, c=c):
                    o = o.clone()
                    o[:, c] = 0
                    return o

                h = module.register_forward_hook(zero)
                yk = float(model(x[b : b + 1])[0, classes[b]])
                h.remove()
                w[b, c] = (y - yk) / y
    return w


@pytest.mark.parametrize("layer", ["relu1", "conv2", "relu2"])
@pytest.mark.parametrize("batch_size", [1, 3, 128])
def test_ablationcam_matches_one_forward_per_channel(tiny_cnn, tiny_input, layer, batch_size):
    classes = tiny_cnn(tiny_input).argmax(1).tolist()
    ref_w = ref_ablation(tiny_cnn, tiny_input, layer, classes)
    exp = Explainer(tiny_cnn, layer).explain(tiny_input, get_method("ablationcam", batch_size=batch_size))
    assert torch.allclose(exp.weights[layer].double(), ref_w, atol=1e-5, rtol=1e-4)
    a, _, _, _ = reference_state(tiny_cnn, tiny_input, "relu1") if layer == "relu1" else (None,) * 4
    if a is not None:
        assert torch.allclose(exp.raw_maps[layer].double(), combine(a, ref_w.tolist()), atol=ATOL, rtol=RTOL)


def test_ablationcam_runs_lower_layers_once_per_chunk(tiny_cnn, tiny_input):
    seen = []
    h = tiny_cnn.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        Explainer(tiny_cnn, "relu2").explain(tiny_input, get_method("ablationcam", batch_size=3))
    finally:
        h.remove()
    # 1 capture forward of the batch of 3, then per sample ceil(8 / 3) = 3 chunks of ONE image each
    assert seen == [3] + [1] * 9
    fast = Explainer(tiny_cnn, "relu2").explain(tiny_input, "ablationcam")
    slow = Explainer(tiny_cnn, "relu2").explain(tiny_input, get_method("ablationcam", share_lower=False))
    assert torch.allclose(fast.weights["relu2"], slow.weights["relu2"], atol=1e-6)


class BatchFromInput(nn.Module):
    """A forward that reshapes with the INPUT's batch size (as efficientnet_lite_pytorch does)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 10 * 12, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(x.shape[0], -1))


def test_ablationcam_clear_error_then_share_lower_false(tiny_input):
    torch.manual_seed(0)
    model = BatchFromInput().eval()
    with pytest.raises((MethodError, RuntimeError)):
        Explainer(model, "conv").explain(tiny_input, get_method("ablationcam", batch_size=2))
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    exp = Explainer(model, "conv").explain(tiny_input, get_method("ablationcam", share_lower=False))
    assert torch.isfinite(exp.weights["conv"]).all()


@pytest.mark.parametrize("options", [("ablationcam", {"batch_size": 0}), ("fem", {"k": "2"}), ("kpcacam", {"kernel": "x"})])
def test_bad_options(options):
    with pytest.raises(MethodError):
        get_method(options[0], **options[1])


@pytest.mark.parametrize(
    ("alias", "name"),
    [("Eigen-CAM", "eigencam"), ("EigenGrad-CAM", "eigengradcam"), ("KPCA-CAM", "kpcacam"),
     ("Ablation-CAM", "ablationcam"), ("GradCAMElementWise", "gradcamelementwise"), ("FEM", "fem")],
)
def test_aliases(alias, name):
    assert get_method(alias).name == name
