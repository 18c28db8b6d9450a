"""The demo section: real network bundle (tiny config) → game with simulated players → labels → report."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("featurelens.game.simulate")


@pytest.mark.slow
def test_labels_demo_section_quick(tmp_path, lite0, sbert):
    from featurelens.demo import SECTIONS, DemoContext
    from featurelens.labels.demo import section

    assert "featurelens.labels.demo:section" in SECTIONS
    ctx = DemoContext(out_dir=tmp_path, quick=True, log=lambda _m: None, cache={"spec": lite0})
    s = section(ctx)
    assert "SIMULATED" in s.title and "SIMULATED PLAYERS" in s.html
    assert s.summary["simulated_players"] is True and s.summary["game_errors"] == 0
    assert (
        "real layer-wise cluster maps" in s.summary["bundle"]
    )  # the network pipeline's bundle, not synthetic
    assert s.summary["export_rows"] == s.summary["labels_submitted"] == s.summary["rows"] > 0
    assert s.summary["unknown_image"] == s.summary["unknown_cluster"] == 0
    for f in s.files:
        assert (tmp_path / f).is_file(), f
    assert "data:image/png;base64," in s.html
