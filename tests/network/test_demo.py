"""The demo's network section runs the library's default mode on post-activation layers and says so."""

from __future__ import annotations

import pytest

from featurelens.demo import DemoContext
from featurelens.network.demo import section
from featurelens.network.pipeline import NetworkParams


@pytest.mark.slow
def test_network_demo_section_uses_the_default_mode_and_names_its_layers(lite0, tmp_path):
    ctx = DemoContext(out_dir=tmp_path, quick=True, log=lambda _: None, cache={"spec": lite0})
    sec = section(ctx)
    mode = NetworkParams().mode
    assert sec.summary["mode"] == mode and sec.summary["images"] == 3 and sec.summary["layers"] == 2
    layers = sec.summary["layers_used"]
    assert len(layers) == 2 and all(name.endswith(".act") for name in layers) and layers[-1] == "head.act"
    assert f"<b>Mode: {mode}</b>" in sec.html and "the last 2 of the 17 default layers" in sec.html
    # the small dataset: the real photo and its augmented views, marked, all of one class
    data = sec.summary["dataset"]
    assert [d["image"] for d in data] == ["chelsea", "chelsea_aug-flip", "chelsea_aug-crop"]
    assert data[0]["augmented"] is None and all(d["augmented"].startswith("AUGMENTED") for d in data[1:])
    assert len({d["class"] for d in data}) == 1 and sec.html.count("[AUGMENTED") >= 2
    assert ctx.cache["network_bundle"]["bundle"].root == tmp_path / "network" / "bundle"  # shared with labels
    assert all(name in sec.html for name in layers)
    assert (tmp_path / "network" / "bundle" / "index.html").is_file()


def test_demo_layers_are_spread_over_the_default_selection(lite0, tmp_path):
    from featurelens.network.demo import LAYERS, demo_layers

    layers, n_default = demo_layers(DemoContext(out_dir=tmp_path, cache={"spec": lite0}))
    assert n_default == 17 and len(layers) == LAYERS
    assert layers[0] == "blocks.8.expand.act" and layers[-1] == "head.act"


def test_augmented_views():
    from PIL import Image

    from featurelens.network.demo import augment

    im = Image.new("RGB", (100, 60))
    im.putpixel((0, 0), (255, 0, 0))
    assert augment(im, "aug-flip").getpixel((99, 0)) == (255, 0, 0)
    assert augment(im, "aug-crop").size == (80, 54)
    with pytest.raises(ValueError):
        augment(im, "rotate")
