"""``featurelens bundle upgrade``: every older bundle version (1 and 2) becomes a valid version-3 bundle with
the same metadata, maps equal to float16 precision, image maps equal to the stored PNGs, the same photo."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from featurelens.cli.main import main
from featurelens.network.bundle import BundleUpgradeWarning, BundleWriter, load_bundle, validate_bundle
from featurelens.network.clustering import finish_map


def smooth_photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth synthetic RGB picture (JPEG keeps it well, unlike noise)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([np.sin(3 * xx + seed), np.cos(2 * yy), xx * yy], axis=-1)
    return ((rgb - rgb.min()) / np.ptp(rgb) * 255).astype(np.uint8)


def v1_bundle(root) -> None:
    """A version-1 bundle written by hand (v1 had no writer left): one image, one layer, two clusters whose
    image maps are v1's σ = 1 smoothed upsampling of their feature maps."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    Image.fromarray(smooth_photo(16, 16, 0)).save(root / "images" / "i.png")
    clusters = []
    for k in range(2):
        f = rng.random((4, 4)).astype(np.float32)
        f = (f - f.min()) / (f.max() - f.min())
        np.save(root / f"{k}.npy", f)
        m = finish_map(torch.from_numpy(f), (16, 16), 1.0).numpy()
        Image.fromarray((m * 255 + 0.5).astype(np.uint8), mode="L").save(root / f"{k}.png")
        Image.new("RGB", (16, 16)).save(root / f"{k}_o.png")
        clusters.append({"id": f"i/l/{k}", "layer": "l", "index": k, "channels": [k, k + 2], "weight": 60.0 - 20 * k,
                         "effect": 0.5 - k, "map_npy": f"{k}.npy", "map_png": f"{k}.png", "overlay_png": f"{k}_o.png"})
    data = {"schema": "featurelens.network-bundle", "version": 1, "created": "2024-01-01T00:00:00+00:00",
            "model": {"name": "m", "input_size": [16, 16]}, "target": {"kind": "k", "description": ""},
            "class_names": ["a", "b"], "params": {"mode": "faithful", "smooth_sigma": 1.0},
            "layers": [{"name": "l", "channels": 4, "feature_size": [4, 4]}],
            "images": [{"id": "i", "file": "images/i.png", "source": "s.jpg", "width": 16, "height": 16,
                        "true_class": "a", "predicted_class": "b", "predicted_index": 1, "score": 2.5,
                        "clusters": clusters}]}
    (root / "bundle.json").write_text(json.dumps(data))


def v2_bundle(root) -> None:
    """A version-2 bundle from :class:`BundleWriter`: layer ``a``'s image maps are the pipeline's rendering
    of its feature maps; layer ``b``'s are not (random), so the upgrade must store them."""
    rng = np.random.default_rng(2)
    w = BundleWriter(root, model={"name": "m", "input_size": [20, 24]}, target={"kind": "k", "description": ""},
                     class_names=["x", "y"], params={"layers": ["a", "b"]},
                     method={"mode": "stable", "prune_rule": "paper", "cluster_map_rule": "raw", "smooth_sigma": None})
    w.add_layer("a", 8, (5, 6), activation="ReLU")
    w.add_layer("b", 8, (3, 3), activation=None)
    for n in range(3):
        iid = w.add_image(smooth_photo(20, 24, n), source=f"{n}.jpg", predicted_class="y",
                          predicted_index=1, score=float(n), true_class=None if n else "x",
                          layer_stats=[{"name": "a", "kept_channels": 5, "k": 3}])
        for k in range(2):
            f = rng.random((5, 6)).astype(np.float32)
            w.add_cluster(iid, "a", channels=[k], weight=50.0, feature_map=f, effect=0.1 * k,
                          image_map=finish_map(torch.from_numpy(f), (20, 24)).numpy())
        w.add_cluster(iid, "b", channels=[3, 4], weight=10.0, feature_map=rng.random((3, 3)).astype(np.float32),
                      image_map=rng.random((20, 24)).astype(np.float32))
    w.close()


@pytest.mark.parametrize("make", [v1_bundle, v2_bundle], ids=["v1", "v2"])
def test_upgrade_from_every_older_version(tmp_path, make, capsys):
    make(tmp_path / "old")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BundleUpgradeWarning)
        old = load_bundle(tmp_path / "old")
    assert main(["bundle", "upgrade", str(tmp_path / "old"), str(tmp_path / "new"), "--shard-size", "2"]) == 0
    assert "version-3 bundle" in capsys.readouterr().out
    assert validate_bundle(tmp_path / "new") == []
    new = load_bundle(tmp_path / "new")
    assert new.version == 3 and new.sharded and old.version in (1, 2)
    assert new.method == old.method and new.class_names == old.class_names and new.model == old.model
    assert [(la.name, la.channels, la.feature_size, la.activation) for la in new.layers] == \
        [(la.name, la.channels, la.feature_size, la.activation) for la in old.layers]
    assert not any(p.suffix == ".png" or p.suffix == ".npy" for p in (tmp_path / "new").rglob("*"))
    assert [im.id for im in new.images] == [im.id for im in old.images]
    for a, b in zip(old.images, new.images):
        assert (a.true_class, a.predicted_class, a.predicted_index, a.score, a.layer_stats) == \
            (b.true_class, b.predicted_class, b.predicted_index, b.score, b.layer_stats)
        assert [(c.id, c.channels, c.weight, c.effect) for c in a.clusters] == \
            [(c.id, c.channels, c.weight, c.effect) for c in b.clusters]
        for ca, cb in zip(a.clusters, b.clusters):
            np.testing.assert_allclose(new.load_map(cb), old.load_map(ca), rtol=2.0**-11, atol=1e-7)
            np.testing.assert_allclose(new.load_image_map(cb), old.load_image_map(ca), atol=2.5 / 255)
        photo_a = np.asarray(old.display_image(a), np.float32)
        photo_b = np.asarray(new.display_image(b), np.float32)
        assert photo_a.shape == photo_b.shape and np.abs(photo_a - photo_b).mean() < 6  # JPEG
    # an upgraded bundle is not upgraded again, and an existing output is never overwritten
    assert main(["bundle", "upgrade", str(tmp_path / "new"), str(tmp_path / "again")]) == 2
    assert "already a version-3 bundle" in capsys.readouterr().err
    assert main(["bundle", "upgrade", str(tmp_path / "old"), str(tmp_path / "new")]) == 2


def test_v2_random_image_maps_are_stored_and_a_broken_shard_is_reported(tmp_path):
    v2_bundle(tmp_path / "old")
    assert main(["bundle", "upgrade", str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    idx = json.loads(next((tmp_path / "new" / "shards").glob("*.json")).read_text())
    names = set(idx["images"][0]["maps"])
    assert names == {"a", "b", "b#image"}  # only the layer whose PNGs are not a rendering of its maps
    npz = next((tmp_path / "new" / "shards").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:-10])  # truncated
    problems = validate_bundle(tmp_path / "new")
    assert any("size or checksum differs" in p for p in problems)
    assert main(["bundle", "validate", str(tmp_path / "new")]) == 1
