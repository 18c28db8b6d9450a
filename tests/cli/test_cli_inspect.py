"""`featurelens inspect`: layer table, default layer, JSON output, bad models."""

from __future__ import annotations

import json

from cli_helpers import assert_one_line_error


def test_table_marks_the_default_layer(cli):
    r = cli("inspect", "efficientnet_lite0")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("efficientnet_lite0:") and "1x3x224x224" in lines[0]
    marked = [line for line in lines if line.startswith("*  ")]
    assert len(marked) == 1 and marked[0].split()[1:4] == ["head", "ConvBNAct", "1x1280x7x7"]
    assert any(
        line.split()[:2] == ["blocks.15", "MBConvBlock"] or line.split()[0] == "blocks.15" for line in lines
    )
    assert "default target layer: head" in lines[-1]


def test_json_lists_every_layer_with_shapes(cli):
    r = cli("inspect", "--json")
    assert r.code == 0
    info = json.loads(r.out)
    assert (
        info["model"] == "efficientnet_lite0" and info["default_layer"] == "head" and info["classes"] == 1000
    )
    by_name = {layer["name"]: layer for layer in info["layers"]}
    assert by_name["head"]["output_shape"] == [1, 1280, 7, 7] and by_name["head"]["default"]
    assert by_name["fc"]["type"] == "Linear" and by_name["fc"]["output_shape"] == [1, 1000]
    assert not by_name["fc"]["spatial"] and by_name["blocks.15"]["spatial"]
    assert sum(layer["default"] for layer in info["layers"]) == 1
    r = cli("inspect", "--json", "--spatial")
    assert all(layer["spatial"] for layer in json.loads(r.out)["layers"])


def test_model_without_conv_layer_is_listed_without_default(cli, odd_models):
    r = cli("inspect", odd_models / "no_conv.pt", "--trust")
    assert r.code == 0, r.err
    assert "Linear" in r.out and "no layer has a spatial" in r.out
    assert not any(line.startswith("*") for line in r.out.splitlines())


def test_bad_models(cli, odd_models, tmp_path):
    assert_one_line_error(cli("inspect", "nonet"), "unknown model", "efficientnet_lite0")
    assert_one_line_error(cli("inspect", odd_models / "no_conv.pt"), "--trust")
    assert_one_line_error(cli("inspect", odd_models / "scripted.pt"), "TorchScript")
    assert_one_line_error(cli("inspect", tmp_path / "gone.pt"), "not found")
