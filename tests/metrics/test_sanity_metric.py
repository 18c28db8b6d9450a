"""Model-randomisation sanity check: Spearman reference, weight-free maps keep ρ = 1, Grad-CAM's drops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from featurelens import Explainer
from featurelens.metrics.sanity import model_randomisation_check, randomisation_stages, spearman


def test_spearman_matches_scipy_with_ties():
    torch.manual_seed(0)
    a = torch.rand(3, 6, 7)
    b = a + 0.3 * torch.rand(3, 6, 7)
    a[0] = a[0].round()  # heavy ties
    b[2] = torch.relu(b[2] - 0.8)  # zeros, like a ReLU'd CAM
    ours = spearman(a, b)
    for i in range(3):
        ref = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert abs(float(ours[i]) - ref) < 1e-5
    assert spearman(torch.ones(1, 4, 4), torch.ones(1, 4, 4)).item() == 1.0
    assert spearman(torch.rand(1, 4, 4), torch.zeros(1, 4, 4)).item() == 0.0


def edge_map(model, x):
    """Sobel gradient magnitude of the input: ignores the model entirely."""
    k = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    g = x.mean(1, keepdim=True)
    gx = F.conv2d(g, k.view(1, 1, 3, 3), padding=1)
    gy = F.conv2d(g, k.t().reshape(1, 1, 3, 3), padding=1)
    return (gx**2 + gy**2).sqrt()[:, 0]


def test_weight_free_map_keeps_rank_correlation_one(tiny_cnn, tiny_input):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    res = model_randomisation_check(tiny_cnn, edge_map, tiny_input)
    assert res.stages == ["fc", "conv2", "conv1"]  # top first
    assert torch.allclose(res.correlations, torch.ones_like(res.correlations))
    after = tiny_cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gradcam_changes_under_randomisation(tiny_cnn):
    torch.manual_seed(5)
    x = torch.randn(4, 3, 16, 16)
    classes = tiny_cnn(x).argmax(1)
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}

    def gradcam(model, inputs):
        return Explainer(model, "conv2").explain(inputs, "gradcam", target=classes).map

    assert randomisation_stages(tiny_cnn) == ["conv1", "conv2", "fc"]
    res = model_randomisation_check(tiny_cnn, gradcam, x, seed=1)
    assert res.correlations.shape == (3, 4)
    assert res.final < 0.5
    assert float(res.mean_per_stage.min()) < 0.6
    assert all(torch.equal(before[k], v) for k, v in tiny_cnn.state_dict().items())
    assert all(p.requires_grad for p in tiny_cnn.parameters())
