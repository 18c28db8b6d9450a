"""Post-activation layer tracing on tiny hand-built models: the traced layer is the activation's output."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featurelens.engine import Capture
from featurelens.network.layers import resolve_units, select_layers, trace_units, unit_call
from featurelens.network.pipeline import NetworkParams, explain_network


class ConvBnRelu(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)  # conv -> relu (no norm)
        self.act2 = nn.ReLU6()
        self.conv3 = nn.Conv2d(5, 6, 1)  # conv -> bn, no activation
        self.bn3 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.act2(self.conv2(self.relu(self.bn(self.conv(x)))))
        return self.head(self.bn3(self.conv3(x)).mean((2, 3)))


class ReusedRelu(nn.Module):
    """torchvision-style: one ``relu`` module after two convs and after a residual add."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        identity = out
        out = self.bn2(self.conv2(out))
        shortcut = self.relu(self.bn2(self.conv2(identity)))  # call 1: a conv → bn → relu chain
        out += identity  # in place: the next relu does NOT consume a conv's output unchanged
        out = self.relu(out)  # call 2
        return self.head((out + shortcut).mean((2, 3)))


def _randomise_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 8, 8)


def _reference(model: nn.Module, x: torch.Tensor, module: str, call: int) -> torch.Tensor:
    """The output of call ``call`` of ``module``, recorded by a plain hook (a copy, before later in-place ops)."""
    seen: list[torch.Tensor] = []
    h = model.get_submodule(module).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    return seen[call]


@pytest.mark.parametrize("inplace", [False, True])
def test_conv_bn_relu_conv_relu_and_conv_bn_without_activation(inplace, x):
    model = _randomise_bn(ConvBnRelu(inplace))
    units, bare = trace_units(model, x[:1])
    assert [(u.name, u.conv, u.norm, u.activation) for u in units] == [
        ("relu", "conv", "bn", "ReLU"), ("act2", "conv2", None, "ReLU6")]
    assert [(u.name, u.activation) for u in bare] == [("conv3", None)]
    assert select_layers(model, x[:1], "all") == ["relu", "act2"]
    assert select_layers(model, x[:1], ["conv", "conv3"]) == ["relu", "conv3"]  # conv names still work
    # the captured tensor is the activation's output: >= 0 and equal to relu(bn(conv(x)))
    with torch.no_grad():
        expect = torch.relu(model.bn(model.conv(x)))
    res = explain_network(model, x, resolve_units(model, x[:1], "all"), params=NetworkParams(effect=False, workers=1))
    assert [lr.name for lr in res[0].layers] == ["relu", "act2"]
    with Capture(model, ["relu"]) as cap:
        cap.forward(x)
        got = cap.activations["relu"][0].detach()
    assert torch.allclose(got, expect, atol=1e-6) and float(got.min()) >= 0.0
    assert not torch.allclose(got, model.conv(x).detach())  # not the raw conv output


@pytest.mark.parametrize("inplace", [False, True])
def test_one_relu_module_reused_twice_and_after_a_residual_add(inplace, x):
    model = _randomise_bn(ReusedRelu(inplace))
    units, bare = trace_units(model, x[:1])
    # calls 0 and 1 follow conv → bn; call 2 follows an in-place residual add and is not a unit
    assert [(u.name, u.module, u.call, u.conv, u.norm) for u in units] == [
        ("relu@0", "relu", 0, "conv1", "bn1"), ("relu@1", "relu", 1, "conv2", "bn2")]
    assert [u.name for u in bare] == ["conv2@0"]  # the conv2 call whose bn output got the residual
    assert unit_call("relu@1") == ("relu", 1) and unit_call("head") == ("head", -1)
    res = explain_network(model, x, units, params=NetworkParams(effect=False, workers=1))
    assert [lr.name for lr in res[0].layers] == ["relu@0", "relu@1"]
    with torch.no_grad():
        first = torch.relu(model.bn1(model.conv1(x)))
        second = torch.relu(model.bn2(model.conv2(first)))
    for u, expect in zip(units, (first, second)):
        with Capture(model, [u.module]) as cap:
            cap.forward(x)
            got = cap.activations[u.module][u.call].detach()
        assert torch.allclose(got, expect, atol=1e-6)
        assert torch.allclose(_reference(model, x, u.module, u.call), expect, atol=1e-6)


def test_a_model_with_functional_activations_falls_back_to_raw_convs(x):
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 4, 3)
            self.c2 = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3))

    model = Functional().eval()
    assert trace_units(model, x[:1])[0] == []
    assert [(u.name, u.activation) for u in resolve_units(model, x[:1], "all")] == [("c1", None), ("c2", None)]


def test_lite0_units_default_selection_and_non_negative_maps(lite0):
    m, s = lite0.model, lite0.sample_input()
    units, bare = trace_units(m, s)
    assert len(units) == 33 and len(bare) == 16
    assert all(u.activation == "ReLU6" and u.norm for u in units)
    assert all(b.conv.endswith(".project.conv") for b in bare)
    default = resolve_units(m, s)
    assert [u.name for u in default] == [u.name for u in units[16:]]
    assert default[0].name == "blocks.8.expand.act" and default[-1].name == "head.act"
    # the old selection syntax keeps working, on the activated units
    assert select_layers(m, s, ["blocks.15"]) == ["blocks.15.expand.act", "blocks.15.depthwise.act"]
    assert select_layers(m, s, ["head", "blocks.15.project.conv"]) == ["blocks.15.project.conv", "head.act"]
    assert select_layers(m, s, ["blocks.14.project..head"]) == [
        "blocks.14.project.conv", "blocks.15.expand.act", "blocks.15.depthwise.act", "head.act"]
    assert select_layers(m, s, ["-2:"]) == ["blocks.15.depthwise.act", "head.act"]
    assert select_layers(m, s, ["0"]) == ["stem.act"]
    assert select_layers(m, s, ["head.conv"]) == ["head.act"]
    # every activated layer's activations are >= 0 on a real photo
    from featurelens.imaging import sample_images

    x = lite0.prepare([sample_images(["coffee"])["coffee"]])
    with Capture(m, [u.module for u in units]) as cap:
        cap.forward(x)
        assert all(float(cap.activations[u.module][u.call].min()) >= 0.0 for u in units)
