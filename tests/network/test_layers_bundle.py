"""Layer selection on the real model, the bundle round trip, determinism and the validator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from featurelens.errors import BundleError, FeaturelensError, LayerNotFoundError, ModelError
from featurelens.network.build import build_bundle, read_labels, true_class_for
from featurelens.network.bundle import load_bundle, validate_bundle, validate_dict
from featurelens.network.layers import conv_layers, select_layers
from featurelens.network.pipeline import NetworkParams, explain_network
from featurelens.network.viewer import write_viewer


def test_conv_layers_of_lite0(lite0):
    sample = lite0.sample_input()
    convs = conv_layers(lite0.model, sample)
    expected = [n for n, m in lite0.model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(convs) == sorted(expected) and len(convs) == 49
    assert convs[0] == "stem.conv" and convs[-1] == "head.conv"


def test_layer_selection_errors_are_typed(lite0):
    m, s = lite0.model, lite0.sample_input()
    with pytest.raises(LayerNotFoundError, match=r"blocks\.12") as exc:
        select_layers(m, s, ["blocks.12.expnd.conv"])
    assert "blocks.12.expand.conv" in exc.value.close_matches
    with pytest.raises(ModelError, match="not a conv or activation layer"):
        select_layers(m, s, ["pool"])
    with pytest.raises(ModelError, match="backwards"):
        select_layers(m, s, ["head..blocks.3"])
    with pytest.raises(ModelError, match="out of range"):
        select_layers(m, s, ["99"])


def test_explain_network_handles_a_tiny_cnn_and_zero_gradients(tiny_cnn, tiny_input):
    layers = select_layers(tiny_cnn, tiny_input[:1], "all")
    assert layers == ["relu1", "relu2"]
    res = explain_network(tiny_cnn, tiny_input, layers, params=NetworkParams(effect=True, workers=1))
    assert len(res) == 3
    for r in res:
        for lr in r.layers:
            assert lr.weights.shape == (lr.channels,)
            s = float(lr.weights.sum())
            assert s == 0.0 or abs(s - 100.0) < 1e-3
            for c in lr.clusters:
                assert c.effect is not None and np.isfinite(c.effect)
    # a target that ignores the input: all gradients zero -> no clusters, no crash
    const = explain_network(tiny_cnn, tiny_input, layers, target=lambda out: out[:, 0] * 0 + out.detach()[:, 0],
                            params=NetworkParams(workers=1))
    assert all(lr.clusters == [] for r in const for lr in r.layers)


@pytest.mark.slow
def test_bundle_round_trip_is_deterministic_and_valid(lite0, photos, tmp_path):
    images = {k: photos[k] for k in ("chelsea", "coffee")}
    params = NetworkParams()  # the default mode and rules
    layers = ["blocks.15.project", "head"]  # a conv with no activation (raw output) and an activated one
    b1 = build_bundle(lite0, images, tmp_path / "a", layers=layers, params=params, labels={"chelsea": "cat"})
    no_effect = NetworkParams(effect=False)  # the effect is a plain forward; skip it twice
    b2 = build_bundle(lite0, images, tmp_path / "b", layers=layers, params=no_effect, labels={"chelsea": "cat"})
    assert validate_bundle(tmp_path / "a") == []
    d1 = json.loads((tmp_path / "a" / "bundle.json").read_text())
    d2 = json.loads((tmp_path / "b" / "bundle.json").read_text())
    d1.pop("created"), d2.pop("created")
    d1["params"].pop("effect"), d2["params"].pop("effect")
    for im in d1["images"]:
        for c in im["clusters"]:
            assert c["effect"] is not None
            c["effect"] = None
    assert d1 == d2  # fixed seed -> identical bundle
    for im in b1.images:
        for c in im.clusters:
            assert np.array_equal(b1.load_map(c), b2.load_map(c))
    loaded = load_bundle(tmp_path / "a")
    assert loaded.to_dict() == b1.to_dict()
    chelsea = loaded.image("chelsea")
    assert chelsea.true_class == "cat" and loaded.image("coffee").true_class is None
    assert chelsea.predicted_class == lite0.class_name(chelsea.predicted_index)
    assert [s["name"] for s in chelsea.layer_stats] == ["blocks.15.project.conv", "head.act"]
    assert [(la.name, la.activation, la.conv) for la in loaded.layers] == [
        ("blocks.15.project.conv", None, "blocks.15.project.conv"), ("head.act", "ReLU6", "head.conv")]
    assert loaded.version == 2 and loaded.method == {"mode": params.mode, "prune_rule": "paper",
                                                     "cluster_map_rule": "raw", "smooth_sigma": None}
    assert all(isinstance(s["kept_channels"], int) and s["kept_channels"] > 0 for s in chelsea.layer_stats)
    for layer in ("blocks.15.project.conv", "head.act"):
        cl = [c for c in chelsea.clusters if c.layer == layer]
        assert cl, f"no cluster for {layer}"
        assert [c.index for c in cl] == list(range(len(cl)))
        assert [c.weight for c in cl] == sorted((c.weight for c in cl), reverse=True)
        assert sum(c.weight for c in cl) <= 100.0 + 1e-6
        assert all(c.id == f"chelsea/{layer}/{c.index}" and c.effect is not None for c in cl)
        m = loaded.load_map(cl[0])
        assert m.shape == (7, 7) and m.min() >= 0 and m.max() <= 1
        assert loaded.load_image_map(cl[0]).shape == (224, 224)
    # the viewer embeds the image list; the clusters are in its lazily loaded chunk files
    page = write_viewer(tmp_path / "a").read_text()
    assert '"schema":"featurelens.network-bundle"' in page and '"id":"chelsea"' in page
    assert "chelsea/head.act/0" in (tmp_path / "a" / "viewer" / "chunk-0000.js").read_text()


def _tiny_manifest() -> dict:
    return {
        "schema": "featurelens.network-bundle", "version": 1, "created": "",
        "model": {"name": "m", "input_size": [4, 4]}, "target": {"kind": "k", "description": ""},
        "class_names": ["a"], "params": {}, "layers": [{"name": "l", "channels": 2, "feature_size": [2, 2]}],
        "images": [{"id": "i", "file": "images/i.png", "source": "s", "width": 4, "height": 4, "true_class": None,
                    "predicted_class": "a", "predicted_index": 0, "score": 1.0,
                    "clusters": [{"id": "i/l/0", "layer": "l", "index": 0, "channels": [1], "weight": 50.0,
                                  "effect": None, "map_npy": "a.npy", "map_png": "a.png", "overlay_png": "b.png"}]}],
    }


def test_validator_reports_unknown_versions_and_bad_fields(tmp_path):
    data = _tiny_manifest()
    assert validate_dict(data, check_files=False) == []
    data["version"] = 7
    (tmp_path / "bundle.json").write_text(json.dumps(data))
    problems = validate_bundle(tmp_path)
    assert len(problems) == 1 and "version 7 is not supported" in problems[0]
    with pytest.raises(BundleError, match="version 7 is not supported"):
        load_bundle(tmp_path)
    data = _tiny_manifest()
    data["images"][0]["clusters"][0]["layer"] = "nope"
    data["images"][0]["clusters"][0]["weight"] = -1
    data["images"][0]["layer_stats"] = "x"
    errs = validate_dict(data, check_files=False)
    data["images"][0]["layer_stats"] = [{"name": "l", "stability": 1.0, "map_stability": 3.0}]
    assert validate_dict(data, check_files=False)[-1].endswith("layer_stats[0].map_stability: must be a number "
                                                               "in [-1, 1] or absent")
    assert any("'nope' is not among" in e for e in errs)
    assert any("weight" in e for e in errs) and any("layer_stats" in e for e in errs)
    # missing files are reported when the folder is checked
    (tmp_path / "bundle.json").write_text(json.dumps(_tiny_manifest()))
    assert any("missing from the bundle" in e for e in validate_bundle(tmp_path))
    with pytest.raises(BundleError, match=r"no bundle\.json"):
        load_bundle(tmp_path / "nothing")


def _write_files(root, data: dict) -> None:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    Image.new("RGB", (4, 4)).save(root / "images" / "i.png")
    np.save(root / "a.npy", np.zeros((2, 2), np.float32))
    Image.new("L", (4, 4)).save(root / "a.png")
    Image.new("RGB", (4, 4)).save(root / "b.png")
    (root / "bundle.json").write_text(json.dumps(data))


def test_a_version_1_bundle_loads_upgraded_with_a_message_and_v2_is_checked(tmp_path):
    from featurelens.network.bundle import BundleUpgradeWarning

    v1 = _tiny_manifest()
    v1["params"] = {"mode": "faithful", "smooth_sigma": 1.0}
    _write_files(tmp_path / "v1", v1)
    assert validate_bundle(tmp_path / "v1") == []
    with pytest.warns(BundleUpgradeWarning, match="version-1 bundle"):
        b = load_bundle(tmp_path / "v1")
    assert b.version == 2 and b.upgraded_from == 1
    assert [(la.name, la.activation) for la in b.layers] == [("l", None)]
    assert b.method == {"mode": "faithful", "prune_rule": "uniform", "cluster_map_rule": "normalized",
                        "smooth_sigma": 1.0}
    assert b.image("i").clusters[0].weight == 50.0
    # the upgraded manifest is a valid version-2 manifest
    assert validate_dict(b.to_dict(), check_files=False) == []
    # version 2 requires the method, each layer's activation and (in layer stats) kept_channels
    v2 = dict(_tiny_manifest(), version=2)
    errs = validate_dict(v2, check_files=False)
    assert "bundle: missing key 'method'" in errs and "layers[0]: missing key 'activation'" in errs
    v2["method"] = {"mode": "stable", "prune_rule": "paper", "cluster_map_rule": "raw", "smooth_sigma": None}
    v2["layers"][0]["activation"] = "ReLU6"
    v2["images"][0]["layer_stats"] = [{"name": "l", "k": 3}]
    assert validate_dict(v2, check_files=False) == ["images[0].layer_stats[0]: missing key 'kept_channels'"]
    v2["images"][0]["layer_stats"][0]["kept_channels"] = 5
    assert validate_dict(v2, check_files=False) == []
    for bad in (4, True, "2"):
        assert "is not supported" in validate_dict(dict(v2, version=bad), check_files=False)[0]


def test_labels_sources(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("file,label\ncat.jpg,tabby\ndog,beagle\n")
    labels = read_labels(csv_file)
    assert true_class_for("/x/cat.jpg", labels) == "tabby"
    assert true_class_for("/x/dog.png", labels) == "beagle"
    assert true_class_for("/x/bird.png", labels) is None
    assert true_class_for("/data/zebra/1.jpg", "dirname") == "zebra"
    with pytest.raises(FeaturelensError):
        read_labels(tmp_path / "missing.csv")


def test_explain_network_rejects_empty_input(tiny_cnn):
    with pytest.raises(FeaturelensError):
        explain_network(tiny_cnn, torch.zeros(0, 3, 8, 8), ["conv1"])
    with pytest.raises(FeaturelensError):
        explain_network(tiny_cnn, torch.zeros(1, 3, 8, 8), [])


def test_faithful_mode_is_identical_with_one_or_two_layer_threads(tiny_cnn):
    torch.manual_seed(11)
    x = torch.randn(2, 3, 24, 24)
    runs = [explain_network(tiny_cnn, x, ["conv1", "conv2"], params=NetworkParams(workers=w, effect=False))
            for w in (1, 2, 2)]
    for other in runs[1:]:
        for r0, r1 in zip(runs[0], other):
            for l0, l1 in zip(r0.layers, r1.layers):
                assert np.array_equal(l0.labels, l1.labels) and np.array_equal(l0.weights, l1.weights)
                assert all(np.array_equal(a.image_map, b.image_map) for a, b in zip(l0.clusters, l1.clusters))
