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
    assert sec.summary["mode"] == mode and sec.summary["images"] == 2 and sec.summary["layers"] == 4
    layers = sec.summary["layers_used"]
    assert len(layers) == 4 and all(name.endswith(".act") for name in layers) and layers[-1] == "head.act"
    assert f"<b>Mode: {mode}</b>" in sec.html and "the last 4 of the 17 default layers" in sec.html
    assert all(name in sec.html for name in layers)
    assert (tmp_path / "network" / "bundle" / "index.html").is_file()
