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
    # the new defaults (issue 13): the authors' aggregation, NLTK stop words, game statistics from the export
    assert s.summary["params"] == {"group_by": "guessed", "merge": "transitive", "merged_score": "weighted-mean",
                                   "global_from": "merged-best", "trend": "mean-score", "typo_scope": "image"}
    assert s.summary["stop_words"] == 179 + 7 and s.summary["maps_with_game_stats"] > 0
    assert 'class="full-merge"' in s.html and 'class="game-stats"' in s.html
    for f in s.files:
        assert (tmp_path / f).is_file(), f
    assert "data:image/png;base64," in s.html
    # the small dataset: >= 3 images per class, augmented views marked in the page and in demo.json
    assert all(n >= 3 for n in s.summary["images_per_class"].values())
    assert sum(d["augmented"] is not None for d in s.summary["dataset"]) == 2 and "[AUGMENTED" in s.html
    assert "the network section's bundle, reused" in s.summary["bundle"]


def test_planted_labeller_does_not_depend_on_the_order_maps_are_served():
    from featurelens.labels.demo import planted_labeller

    ways = {0: ["saucer", "sauser", "plate", "dish"], 1: ["handle", "grip"], 2: None}

    def concepts(image_id, layer, index):
        return ways[index]

    rounds = [{"image_id": f"im{i}", "layer": "head", "cluster_index": k} for i in range(4) for k in range(3)]
    forward = planted_labeller(concepts, seed=7)
    backward = planted_labeller(concepts, seed=7)  # the game breaks ties at random: any order can happen
    a = {(r["image_id"], r["cluster_index"]): forward(r) for r in rounds}
    b = {(r["image_id"], r["cluster_index"]): backward(r) for r in reversed(rounds)}
    assert a == b
    assert all(1 <= len(v) <= 2 for v in a.values())
    assert all(set(v) <= {"saucer", "sauser", "plate", "dish"} for k, v in a.items() if k[1] == 0)
    # another player (seed) writes differently somewhere
    other = planted_labeller(concepts, seed=8)
    assert any(other(r) != a[(r["image_id"], r["cluster_index"])] for r in rounds)
