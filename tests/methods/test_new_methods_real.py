"""The methods added for peer parity on the real EfficientNet-Lite0 and a real photo (no reference
here: the formulas are checked on small CNNs; this checks they run on a real network)."""

from __future__ import annotations

import pytest
import torch

from featurelens.api import Explainer
from featurelens.methods import get_method

CHEAP = ["eigencam", "eigengradcam", "kpcacam", "fem", "gradcamelementwise", "shapleycam", "finercam",
         "smoothgradcampp", "fullgrad", "guidedbackprop", "guidedgradcam"]


@pytest.mark.slow
def test_new_methods_on_real_model(lite0, photos):
    x = lite0.prepare([photos["coffee"]])
    exps = Explainer(lite0.model, "blocks.15").explain(x, CHEAP)
    for name, exp in exps.items():
        m = exp.map
        assert m.shape == (1, 224, 224), name
        assert torch.isfinite(m).all() and m.min() >= 0 and m.max() == 1, name
    # ReLU6 modules are guided: the guided map differs from the plain input-gradient magnitude
    xg = x.clone().requires_grad_(True)
    out = lite0.model(xg)
    (g,) = torch.autograd.grad(out[0, int(out.argmax())], xg)
    plain = g.abs().amax(1)[0]
    guided = exps["guidedbackprop"].raw_maps["blocks.15"][0]
    assert not torch.allclose(plain, guided, rtol=1e-2)
    assert all(p.grad is None for p in lite0.model.parameters())


@pytest.mark.slow
def test_ablationcam_on_real_model_head(lite0, photos):
    x = lite0.prepare([photos["chelsea"]])
    exp = Explainer(lite0.model, "head").explain(x, get_method("ablationcam", batch_size=256))
    w = exp.weights["head"][0]
    assert w.shape == (1280,) and torch.isfinite(w).all()
    # at `head` (ReLU6 → GAP → FC) zeroing channel k removes exactly its term W[c, k] · mean A_k
    c = int(exp.target_indices[0])
    with torch.no_grad():
        acts = {}
        h = lite0.model.head.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
        y = lite0.model(x)[0, c]
        h.remove()
        expected = lite0.model.fc.weight[c] * acts["a"][0].mean(dim=(1, 2)) / y
    assert torch.allclose(w, expected, atol=1e-4)
