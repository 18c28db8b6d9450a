"""Transformer token outputs [B, N, C] → [B, C, H, W]: a small ViT and a Swin-like block in plain torch
(random weights), explicit reshapes, and timm models when timm is installed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featurelens.api import Explainer
from featurelens.errors import FeaturelensError, MethodError
from featurelens.methods import method_names
from featurelens.tokens import to_spatial


class Block(nn.Module):
    """Pre-norm transformer block on [B, N, C] tokens; ``window`` > 0 attends inside windows of the grid."""

    def __init__(self, dim: int, grid: tuple[int, int] | None = None, window: int = 0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.grid, self.window = grid, window

    def _attend(self, t: torch.Tensor) -> torch.Tensor:
        if not self.window:
            return self.attn(t, t, t, need_weights=False)[0]
        b, n, c = t.shape
        (h, w), s = self.grid, self.window  # Swin-style: attention within s×s windows
        x = t.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        x = self.attn(x, x, x, need_weights=False)[0]
        return x.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, n, c)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + self._attend(self.norm1(t))
        return t + self.mlp(self.norm2(t))


class TinyViT(nn.Module):
    """Patches 4×4 → 8-d tokens, a class token (optional), two blocks, head on the class token (or the mean)."""

    def __init__(self, cls_token: bool = True, size: tuple[int, int] = (16, 16)) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        n = (size[0] // 4) * (size[1] // 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8)) if cls_token else None
        self.pos = nn.Parameter(0.1 * torch.randn(1, n + int(cls_token), 8))
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)
        t = self.norm(self.blocks(t + self.pos))
        return self.head(t[:, 0] if self.cls is not None else t.mean(1))


class TinySwin(nn.Module):
    """Patches 2×2 on 16×16 → an 8×8 grid of 8-d tokens (no class token), window attention, mean head."""

    def __init__(self, nhwc: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.layers = nn.Sequential(Block(8, (8, 8), window=4), Block(8, (8, 8), window=4))
        self.nhwc = nn.Unflatten(1, (8, 8)) if nhwc else nn.Identity()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.nhwc(self.layers(self.patch(x).flatten(2).transpose(1, 2)))
        return self.head(t.flatten(1, -2).mean(1))


def _explicit_gradcam(model, x, layer_module, prefix, grid):
    """Grad-CAM on tokens by hand: hook the block, drop the prefix, fold row-major, mean gradient."""
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["t"] = out

    h = layer_module.register_forward_hook(hook)
    try:
        out = model(x)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    finally:
        h.remove()
    t, g = store["t"], store["t"].grad
    b, _, c = t.shape
    a = t[:, prefix:].detach().reshape(b, *grid, c).permute(0, 3, 1, 2)
    g = g[:, prefix:].reshape(b, *grid, c).permute(0, 3, 1, 2)
    return torch.relu((g.mean(dim=(2, 3))[:, :, None, None] * a).sum(1))


@pytest.fixture
def x16():
    torch.manual_seed(5)
    return torch.randn(3, 3, 16, 16)


@pytest.mark.parametrize("cls_token", [True, False])
def test_vit_tokens_are_reshaped_automatically(x16, cls_token):
    torch.manual_seed(0)
    vit = TinyViT(cls_token).eval()
    exp = Explainer(vit, "blocks.1").explain(x16, "gradcam")
    assert all(p.grad is None for p in vit.parameters())  # featurelens touched no .grad
    expected = _explicit_gradcam(vit, x16, vit.blocks[1], int(cls_token), (4, 4))
    assert torch.allclose(exp.raw_maps["blocks.1"], expected, atol=1e-5)
    assert exp.map.shape == (3, 16, 16)


def test_swin_like_block_without_class_token(x16):
    torch.manual_seed(0)
    swin = TinySwin().eval()
    exp = Explainer(swin, "layers.1").explain(x16, "gradcam")
    assert torch.allclose(exp.raw_maps["layers.1"], _explicit_gradcam(swin, x16, swin.layers[1], 0, (8, 8)), atol=1e-5)


def test_channels_last_maps_and_explicit_reshapes(x16):
    torch.manual_seed(0)
    swin = TinySwin(nhwc=True).eval()
    tokens = Explainer(TinySwin().eval(), "layers.1")
    swin.load_state_dict(tokens.model.state_dict())
    nhwc = Explainer(swin, "nhwc", reshape="nhwc").explain(x16, "gradcam")
    assert torch.allclose(nhwc.raw_maps["nhwc"], tokens.explain(x16, "gradcam").raw_maps["layers.1"], atol=1e-5)
    swin.output_fmt = "NHWC"  # timm's Swin says so: automatic
    auto = Explainer(swin, "nhwc").explain(x16, "gradcam")
    assert torch.allclose(auto.raw_maps["nhwc"], nhwc.raw_maps["nhwc"], atol=1e-6)


def test_non_square_grids_need_an_explicit_reshape():
    torch.manual_seed(0)
    vit = TinyViT(cls_token=True, size=(16, 12)).eval()  # 4×3 grid + class token = 13 tokens
    x = torch.randn(2, 3, 16, 12)
    with pytest.raises(MethodError, match="give reshape="):
        Explainer(vit, "blocks.1").explain(x, "gradcam")
    exp = Explainer(vit, "blocks.1", reshape=(4, 3)).explain(x, "gradcam")
    assert torch.allclose(exp.raw_maps["blocks.1"], _explicit_gradcam(vit, x, vit.blocks[1], 1, (4, 3)), atol=1e-5)
    fn = Explainer(vit, "blocks.1", reshape=lambda t: t[:, 1:].reshape(t.shape[0], 4, 3, -1).permute(0, 3, 1, 2))
    assert torch.allclose(fn.explain(x, "gradcam").raw_maps["blocks.1"], exp.raw_maps["blocks.1"])
    # a model that declares its prefix tokens (timm's num_prefix_tokens) overrides the guess
    t = torch.randn(1, 18, 4)
    vit.num_prefix_tokens = 2
    assert to_spatial(t, model=vit).shape == (1, 4, 4, 4)
    assert torch.equal(to_spatial(t, 2), to_spatial(t, model=vit))
    with pytest.raises(MethodError):
        to_spatial(t, 3)


@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_on_vit_tokens(x16, method):
    torch.manual_seed(0)
    vit = TinyViT(cls_token=True).eval()
    ex = Explainer(vit, "blocks.1")
    try:
        batch = ex.explain(x16, method)
    except FeaturelensError as exc:  # methods tied to CNN parts (LRP rules) may refuse, clearly
        pytest.skip(f"{method} does not apply to this ViT: {exc}")
    m = batch.map
    assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    single = ex.explain(x16[2:], method)
    assert torch.allclose(batch.map[2], single.map[0], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "layer"),
    [("vit_tiny_patch16_224", "blocks.11.norm1"), ("swin_tiny_patch4_window7_224", "layers.3.blocks.1.norm2")],
)
def test_timm_models_with_random_weights(name, layer):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    exp = Explainer(model, layer).explain(x, "gradcam")
    assert exp.map.shape == (1, 224, 224) and torch.isfinite(exp.map).all()
    assert tuple(exp.raw_maps[layer].shape[-2:]) == ((7, 7) if "swin" in name else (14, 14))
