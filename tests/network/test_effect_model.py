"""The fused effect model (featurelens.network.effect_model) and the effects computed on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featurelens.network import clustering as C
from featurelens.network.effect_model import effect_model, fold_batchnorm, fused_copy
from featurelens.network.pipeline import NetworkParams, batched_effects
from featurelens.targets import ClassTarget


def _random_bn(n: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(n)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=g))
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.1)
    return bn.eval()


class SamePadConv(nn.Conv2d):
    """A TF-"same" conv in the style of the EfficientNet packages: a ZeroPad2d child, then an unpadded conv."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: tuple[int, int, int, int], **kw) -> None:
        super().__init__(cin, cout, k, stride, **kw)
        self.static_padding = nn.ZeroPad2d(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, 1, self.groups)


class Toy(nn.Module):
    """conv→bn→relu6, a symmetric same-pad depthwise conv→bn→relu6, an asymmetric strided one, one
    ReLU module reused twice, a conv→bn with no activation, a residual add and a ReLU of it, GAP, FC."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.b1, self.a1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), _random_bn(8, 1), nn.ReLU6()
        self.c2, self.b2, self.a2 = SamePadConv(8, 8, 3, 1, (1, 1, 1, 1), groups=8, bias=False), _random_bn(8, 2), nn.ReLU6()
        self.c3, self.b3 = SamePadConv(8, 8, 3, 2, (0, 1, 0, 1), bias=True), _random_bn(8, 3)
        self.relu = nn.ReLU()  # reused
        self.c4, self.b4 = nn.Conv2d(8, 8, 1), _random_bn(8, 4)  # no activation: residual branch
        self.a_res = nn.ReLU()  # reads the residual sum, not a conv output
        self.c5 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a1(self.b1(self.c1(x)))
        h = self.a2(self.b2(self.c2(h)))
        h = self.relu(self.b3(self.c3(h)))
        h = self.a_res(self.b4(self.c4(h)) + h)
        h = self.relu(self.c5(h))
        return self.fc(h.mean((2, 3)))


class SharedConvOutput(nn.Module):
    """The conv output is read by its BN and by a residual add: folding the BN would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), _random_bn(4, 6), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc((self.bn(h) + h).mean((2, 3)))


def test_fold_batchnorm_matches_conv_then_bn():
    torch.manual_seed(0)
    for bias in (True, False):
        conv, bn = nn.Conv2d(3, 6, 3, padding=1, bias=bias).eval(), _random_bn(6, 7)
        x = torch.randn(2, 3, 9, 9)
        with torch.no_grad():
            expect = bn(conv(x))
            fold_batchnorm(conv, bn)
            got = conv(x)
        assert torch.allclose(got, expect, rtol=1e-5, atol=1e-5)


def test_fused_copy_folds_norms_and_padding_and_keeps_the_output():
    model = Toy().eval()
    x = torch.randn(2, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fused_copy(model, x[:1])
    assert fused is not None
    for name in ("b1", "b2", "b3", "b4"):
        assert isinstance(getattr(fused, name), nn.Identity), name
    assert fused.c2.padding == (1, 1) and isinstance(fused.c2.static_padding, nn.Identity)
    assert isinstance(fused.c3.static_padding, nn.ZeroPad2d)  # asymmetric: kept
    assert fused.a1.inplace and fused.a2.inplace and fused.relu.inplace  # both calls of relu read conv outputs
    assert not fused.a_res.inplace
    with torch.no_grad():
        assert torch.allclose(fused(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    assert isinstance(model.b1, nn.BatchNorm2d)


def test_fused_copy_refuses_a_rewrite_that_changes_the_output():
    model = SharedConvOutput().eval()
    x = torch.randn(1, 3, 8, 8)
    assert fused_copy(model, x) is None
    plain = effect_model(model, x)
    assert plain is not model and isinstance(plain.bn, nn.BatchNorm2d)  # falls back to a plain copy
    with torch.no_grad():
        assert torch.allclose(plain(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-6)


def test_effect_model_is_cached_and_follows_weight_changes():
    model = Toy().eval()
    x = torch.randn(1, 3, 16, 16)
    first = effect_model(model, x)
    assert effect_model(model, x) is first
    with torch.no_grad():
        model.c1.weight.mul_(2.0)  # in place: a new version of the parameter
    second = effect_model(model, x)
    assert second is not first
    with torch.no_grad():
        assert torch.allclose(second(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=1e-5, atol=1e-5)
    model.train()
    assert effect_model(model, x) is model  # batch statistics: used as it is


def _straightforward_effects(model, x, classes, maps, fraction, sigma):
    """s(x) − s(x_deleted), one plain forward of the original model per cluster; explicit top-pixel masks."""
    out = []
    with torch.no_grad():
        base = model(x)
        for b, m in enumerate(maps):
            blurred = C.gaussian_blur(x[b], sigma)
            n_top = round(fraction * m[0].numel())
            eff = []
            for cmap in m:
                order = np.lexsort((np.arange(cmap.numel()), -cmap.flatten().numpy()))[:n_top]
                mask = torch.zeros(cmap.numel())
                mask[torch.from_numpy(order)] = 1.0
                mask = mask.view(1, *cmap.shape)
                xd = x[b] * (1 - mask) + blurred * mask
                eff.append(float(base[b, classes[b]]) - float(model(xd[None])[0, classes[b]]))
            out.append(torch.tensor(eff))
    return out


def test_optimised_effects_equal_one_plain_forward_per_cluster_on_a_toy():
    model = Toy().eval()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 16, 16, generator=g)
    maps = [torch.rand(5, 16, 16, generator=g), torch.rand(3, 16, 16, generator=g)]
    classes = [2, 4]
    params = NetworkParams(effect_batch=2, workers=2)
    with torch.no_grad():
        base = model(x)[torch.arange(2), torch.tensor(classes)]
    got = batched_effects(model, x, [ClassTarget(c) for c in classes], base, maps, params)
    expect = _straightforward_effects(model, x, classes, maps, params.effect_fraction, params.effect_blur_sigma)
    for g_, e in zip(got, expect):
        assert torch.allclose(g_, e, rtol=1e-4, atol=1e-5)
    assert (torch.cat(expect).abs() > 1e-3).any()  # the deletions do move the score


@pytest.mark.slow
def test_optimised_effects_equal_one_plain_forward_per_cluster_on_lite0(lite0, photos):
    """EfficientNet-Lite0 and a real photo: the default effect path (fused copy, chunks in two threads,
    capture score reused) against one plain forward of the original model per cluster map."""
    model = lite0.model
    x = lite0.prepare([photos["chelsea"], photos["coffee"]])
    fused = effect_model(model, x[:1])
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == 0  # every BN folded
    g = torch.Generator().manual_seed(2)
    h, w = x.shape[2:]
    coarse = torch.rand(2, 7, 7, 7, generator=g)  # cluster-map-like: smooth, upsampled from 7×7
    maps = [F.interpolate(c[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0] for c in coarse]
    with torch.no_grad():
        out = model(x)
    classes = out.argmax(1).tolist()
    base = out[torch.arange(2), torch.tensor(classes)]
    got = batched_effects(model, x, [ClassTarget(c) for c in classes], base, maps, NetworkParams())
    expect = _straightforward_effects(model, x, classes, maps, 0.2, 8.0)
    for g_, e in zip(got, expect):
        assert torch.allclose(g_, e, rtol=1e-4, atol=1e-4)
