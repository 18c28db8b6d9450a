"""Invariants of the engine, the targets and the result object, checked through every CAM method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featurelens.api import Explainer
from featurelens.engine import Capture
from featurelens.errors import InferenceModeError, LayerNotFoundError, NoConvLayerError, TargetError
from featurelens.imaging import normalize_maps, resize_maps

GRADIENT_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]
# the methods added for pytorch-grad-cam / torchcam parity (issue 15): gradient ones, then gradient-free
EXTRA_GRADIENT_METHODS = ["eigengradcam", "gradcamelementwise", "guidedgradcam"]
# gradient-based, with their own extra passes (not the shared one forward + one backward)
EXTRA_OWN_PASS_METHODS = ["smoothgradcampp", "shapleycam", "finercam", "fullgrad", "guidedbackprop"]
EXTRA_FREE_METHODS = ["eigencam", "kpcacam", "fem", "ablationcam", "sscam", "iscam"]
ALL_METHODS = [
    "cam", *GRADIENT_METHODS, "scorecam", *EXTRA_GRADIENT_METHODS, *EXTRA_OWN_PASS_METHODS, *EXTRA_FREE_METHODS
]
NO_CHANNEL_WEIGHTS = {
    "layercam", "hirescam", "eigencam", "eigengradcam", "kpcacam", "gradcamelementwise", "fullgrad", "guidedbackprop"
}
NOT_CHECKED_HERE = {"relevancecam"}  # LRP hooks; tested in tests/methods/test_relevancecam.py


def test_every_registered_method_goes_through_the_invariants():
    from featurelens.methods import method_names

    assert set(method_names()) - NOT_CHECKED_HERE == set(ALL_METHODS)


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_batch_equals_one_by_one(tiny_cnn, tiny_input, method):
    ex = Explainer(tiny_cnn, "relu2")
    batch = ex.explain(tiny_input, method)
    for i in range(tiny_input.shape[0]):
        single = ex.explain(tiny_input[i : i + 1], method)
        assert torch.allclose(batch.map[i], single.map[0], atol=1e-5)
        assert torch.allclose(batch.raw_maps["relu2"][i], single.raw_maps["relu2"][0], atol=1e-5)
        assert torch.allclose(batch.scores[i], single.scores[0], atol=1e-5)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_maps_in_unit_range_and_upsampled(tiny_cnn, tiny_input, method):
    layers = ["relu2"] if method == "cam" else ["relu1", "relu2"]  # CAM: only the layer before GAP
    exp = Explainer(tiny_cnn, layers).explain(tiny_input, method)
    for layer in layers:
        m = exp.maps[layer]
        assert m.shape == (3, 10, 12)
        assert torch.isfinite(m).all()
        assert m.min() >= 0 and m.max() <= 1
        # each non-constant map spans exactly [0, 1]
        for b in range(3):
            if exp.raw_maps[layer][b].max() > exp.raw_maps[layer][b].min():
                assert m[b].min() == 0 and torch.isclose(m[b].max(), torch.tensor(1.0))
        expected = normalize_maps(resize_maps(exp.raw_maps[layer].float(), (10, 12)))
        assert torch.allclose(m, expected)


@pytest.mark.parametrize(
    "method", [*GRADIENT_METHODS, *EXTRA_GRADIENT_METHODS, *EXTRA_OWN_PASS_METHODS, "cam", "scorecam"]
)
def test_zero_gradients_give_zero_maps_not_nan(tiny_cnn, tiny_input, method):
    """A classifier with an all-zero FC: every gradient (and CAM weight) is 0 → constant map → zeros."""
    with torch.no_grad():
        tiny_cnn.fc.weight.zero_()
    exp = Explainer(tiny_cnn, "relu2").explain(tiny_input, method, target=1)
    assert torch.isfinite(exp.raw_maps["relu2"]).all()
    if exp.weights["relu2"] is not None:
        assert torch.isfinite(exp.weights["relu2"]).all()
    if method != "scorecam":  # Score-CAM scores masks, not gradients: its map need not be constant
        assert (exp.raw_maps["relu2"] == 0).all()
        assert (exp.map == 0).all()
    assert not torch.isnan(exp.map).any()


def test_constant_activation_gives_zero_map_for_every_method(tiny_cnn, tiny_input):
    """A dead layer (all activations 0): Grad-CAM++/XGrad-CAM guard 0/0, every map is zeros."""
    with torch.no_grad():
        tiny_cnn.conv2.bias.fill_(-1e4)
    exps = Explainer(tiny_cnn, "relu2").explain(tiny_input, ALL_METHODS, target=0)
    for name, exp in exps.items():
        assert (exp.map == 0).all(), name
        if exp.weights["relu2"] is not None:
            assert torch.isfinite(exp.weights["relu2"]).all(), name


def test_hooks_removed_and_state_restored_after_success(tiny_cnn, tiny_input):
    before = hook_count(tiny_cnn)
    tiny_cnn.train()
    tiny_cnn.conv1.eval()  # mixed modes must come back exactly
    tiny_cnn.conv2.weight.requires_grad_(False)
    flags = modes(tiny_cnn)
    grads_flags = [p.requires_grad for p in tiny_cnn.parameters()]
    Explainer(tiny_cnn, ["relu1", "relu2"]).explain(tiny_input, [*GRADIENT_METHODS, "scorecam"], fuse="mean")
    Explainer(tiny_cnn, "relu2").explain(tiny_input, ALL_METHODS)
    assert hook_count(tiny_cnn) == before == 0
    assert modes(tiny_cnn) == flags
    assert [p.requires_grad for p in tiny_cnn.parameters()] == grads_flags
    assert all(p.grad is None for p in tiny_cnn.parameters())


class Exploding(nn.Module):
    """TinyCNN-like model that raises after the explained layer has run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        self.bn(self.conv(x))
        raise RuntimeError("boom in the middle of forward")


@pytest.mark.parametrize("method", ["gradcam", "cam", "scorecam"])
def test_hooks_removed_and_state_restored_after_exception(tiny_input, method):
    model = Exploding().train()
    model.fc.weight.requires_grad_(False)
    flags = modes(model)
    req = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        Explainer(model, "bn").explain(tiny_input, method)
    assert hook_count(model) == 0
    assert modes(model) == flags
    assert [p.requires_grad for p in model.parameters()] == req
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError, match="boom"), Capture(model, ["conv", "bn"]) as cap:
        cap.forward(tiny_input)
    assert hook_count(model) == 0 and modes(model) == flags


def test_parameter_grad_stays_none_even_when_params_require_grad(tiny_cnn, tiny_input):
    assert all(p.requires_grad for p in tiny_cnn.parameters())
    Explainer(tiny_cnn, "relu2").explain(tiny_input, ALL_METHODS)
    Explainer(tiny_cnn, ["relu1", "conv2"]).explain(tiny_input, GRADIENT_METHODS)
    assert all(p.grad is None for p in tiny_cnn.parameters())


def test_scorecam_runs_masked_forwards_in_eval_mode(tiny_input):
    """A model left in train mode: batch norm must not mix the masked copies (eval during Score-CAM)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    trained = Explainer(model.train(), "2").explain(tiny_input, "scorecam")
    assert model.training and model[1].training
    evaluated = Explainer(model.eval(), "2").explain(tiny_input, "scorecam")
    assert torch.allclose(trained.weights["2"], evaluated.weights["2"])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_works_under_no_grad(tiny_cnn, tiny_input, method):
    ex = Explainer(tiny_cnn, "relu2")
    free = ex.explain(tiny_input, method)
    with torch.no_grad():
        inside = ex.explain(tiny_input, method)
    assert torch.allclose(free.map, inside.map)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", [*GRADIENT_METHODS, *EXTRA_GRADIENT_METHODS, *EXTRA_OWN_PASS_METHODS])
def test_inference_mode_raises_clear_error(tiny_cnn, tiny_input, method):
    with torch.inference_mode(), pytest.raises(InferenceModeError, match="inference_mode"):
        Explainer(tiny_cnn, "relu2").explain(tiny_input, method)
    assert hook_count(tiny_cnn) == 0


INPLACE_CASES = [
    (m, layer) for m in ALL_METHODS for layer in ("conv1", "conv2", "relu2") if m != "cam" or layer == "relu2"
]


@pytest.mark.parametrize(("method", "layer"), INPLACE_CASES)
def test_inplace_relu_gives_same_map(tiny_cnn, tiny_input, method, layer):
    """conv2's output is overwritten by ReLU(inplace=True): the captured activation must not be."""
    inplace = type(tiny_cnn)(inplace=True).eval()
    inplace.load_state_dict(tiny_cnn.state_dict())
    a = Explainer(tiny_cnn, layer).explain(tiny_input, method)
    b = Explainer(inplace, layer).explain(tiny_input, method)
    assert torch.allclose(a.raw_maps[layer], b.raw_maps[layer], atol=1e-6)
    assert torch.allclose(a.map, b.map, atol=1e-6)
    if layer == "conv2":  # the captured pre-ReLU activation has negative values: not clobbered
        with Capture(inplace, "conv2") as cap:
            cap.forward(tiny_input)
            assert (cap.activation("conv2") < 0).any()


class SharedBlock(nn.Module):
    """The same conv block applied twice per forward (a shared backbone)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        h1 = torch.relu(self.block(x))
        h2 = torch.relu(self.block(h1))
        return self.fc(h2.mean(dim=(2, 3)))


def test_module_called_twice_keeps_both_calls_in_order(tiny_input):
    torch.manual_seed(2)
    model = SharedBlock().eval()
    w, b = model.block.weight.detach(), model.block.bias.detach()
    with Capture(model, "block") as cap:
        out = cap.forward(tiny_input)
        calls = cap.activations["block"]
        assert len(calls) == 2
        c1 = F.conv2d(tiny_input, w, b, padding=1)
        c2 = F.conv2d(torch.relu(c1), w, b, padding=1)
        assert torch.allclose(calls[0], c1, atol=1e-6) and torch.allclose(calls[1], c2, atol=1e-6)
        cls = out.argmax(1)
        grads = cap.gradients(out.gather(1, cls[:, None]).squeeze(1))["block"]
    # independent gradients from a manual split
    a1 = c1.clone().requires_grad_(True)
    a2 = F.conv2d(torch.relu(a1), w, b, padding=1)
    a2_leaf = a2.detach().requires_grad_(True)
    logits = F.linear(torch.relu(a2_leaf).mean(dim=(2, 3)), model.fc.weight.detach(), model.fc.bias.detach())
    score = logits.gather(1, cls[:, None]).sum()
    (g2,) = torch.autograd.grad(score, a2_leaf)
    (g1,) = torch.autograd.grad(a2, a1, grad_outputs=g2)
    assert torch.allclose(grads[1], g2, atol=1e-6)
    assert torch.allclose(grads[0], g1, atol=1e-6)
    # the Explainer picks a call: the last by default, the first with call=0
    last = Explainer(model, "block").explain(tiny_input, "gradcam")
    first = Explainer(model, "block", call=0).explain(tiny_input, "gradcam")
    assert torch.allclose(last.weights["block"], g2.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(first.weights["block"], g1.mean(dim=(2, 3)), atol=1e-6)


def test_target_count_validation_and_broadcast(tiny_cnn, tiny_input):
    ex = Explainer(tiny_cnn, "relu2")
    for method in ("gradcam", "cam", "scorecam"):
        with pytest.raises(TargetError, match="2 target classes for a batch of 3"):
            ex.explain(tiny_input, method, target=[1, 2])
        with pytest.raises(TargetError):
            ex.explain(tiny_input, method, target=[1, 2, 3, 4])
        one = ex.explain(tiny_input, method, target=2)
        many = ex.explain(tiny_input, method, target=[2, 2, 2])
        assert one.target_indices.tolist() == [2, 2, 2]
        assert torch.allclose(one.map, many.map)
    with pytest.raises(TargetError, match="out of range"):
        ex.explain(tiny_input, "gradcam", target=7)


def test_scores_are_the_explained_logits(tiny_cnn, tiny_input):
    exp = Explainer(tiny_cnn, "relu2").explain(tiny_input, "gradcam", target=[0, 3, 1])
    with torch.no_grad():
        logits = tiny_cnn(tiny_input)
    assert torch.allclose(exp.scores, logits[torch.arange(3), torch.tensor([0, 3, 1])])


def test_wrong_layer_name_lists_close_matches(tiny_cnn, tiny_input):
    with pytest.raises(LayerNotFoundError) as info:
        Explainer(tiny_cnn, "relu3")
    assert "relu2" in info.value.close_matches
    assert "relu2" in str(info.value) and "close matches" in str(info.value)


def test_model_without_conv_layer_raises(tiny_input):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 10 * 12, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(NoConvLayerError, match="no layer with a spatial"):
        Explainer(mlp).explain(tiny_input, "gradcam")
    assert hook_count(mlp) == 0


def test_multi_layer_one_forward_one_backward_with_fusion(tiny_cnn, tiny_input, monkeypatch):
    forwards = []
    handle = tiny_cnn.register_forward_pre_hook(lambda m, i: forwards.append(1))
    backwards = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        backwards.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    methods = GRADIENT_METHODS
    exps = Explainer(tiny_cnn, ["relu1", "relu2"]).explain(tiny_input, methods, fuse="mean")
    monkeypatch.undo()
    handle.remove()
    assert len(forwards) == 1 and len(backwards) == 1
    for name in methods:
        exp = exps[name]
        assert exp.layers == ["relu1", "relu2"]
        for layer in exp.layers:
            alone = Explainer(tiny_cnn, layer).explain(tiny_input, name)
            assert torch.allclose(exp.maps[layer], alone.map, atol=1e-6)
        fused = normalize_maps((exp.maps["relu1"] + exp.maps["relu2"]) / 2)
        assert torch.allclose(exp.fused, fused, atol=1e-6)
        assert exp.map is exp.fused
    mx = Explainer(tiny_cnn, ["relu1", "relu2"]).explain(tiny_input, "gradcam", fuse="max")
    assert torch.allclose(
        mx.fused, normalize_maps(torch.maximum(mx.maps["relu1"], mx.maps["relu2"])), atol=1e-6
    )


def test_weights_shapes_and_element_wise_methods(tiny_cnn, tiny_input):
    exps = Explainer(tiny_cnn, "relu2").explain(tiny_input, ALL_METHODS)
    for name, exp in exps.items():
        w = exp.weights["relu2"]
        if name in NO_CHANNEL_WEIGHTS:
            assert w is None
        else:
            assert w.shape == (3, 8), name
        assert exp.method == name and exp.raw_maps["relu2"].shape == (3, 10, 12)
