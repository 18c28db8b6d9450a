"""`featurelens explain` on real photos with the real pretrained EfficientNet-Lite0, and every bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error
from PIL import Image


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def explained(photo_dir, tmp_path_factory):
    """One explain run over the four sample photos, two methods, batches of 3 (so 2 batches)."""
    from featurelens.cli.main import main

    out = tmp_path_factory.mktemp("explained")
    files = sorted(photo_dir.iterdir())
    code = main(
        [
            "explain",
            *map(str, files),
            "-m",
            "gradcam",
            "--method",
            "cam",
            "--batch-size",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out, files


def test_coffee_is_espresso_and_maps_are_at_image_resolution(explained):
    out, _ = explained
    m = _manifest(out)
    assert (
        m["model"] == "efficientnet_lite0" and m["methods"] == ["gradcam", "cam"] and m["layers"] == ["head"]
    )
    by_name = {e["name"]: e for e in m["images"]}
    coffee = by_name["coffee"]
    assert coffee["predicted"]["class"] == "espresso"
    assert coffee["explained"] == coffee["predicted"]
    assert 0.5 < coffee["predicted"]["probability"] <= 1.0
    assert [t["probability"] for t in coffee["top5"]] == sorted(
        (t["probability"] for t in coffee["top5"]), reverse=True
    )
    assert by_name["chelsea"]["predicted"]["class"] in {"Egyptian Mau", "tabby cat", "tiger cat"}
    for entry in m["images"]:
        with Image.open(entry["file"]) as im:
            w, h = im.size
        assert (entry["width"], entry["height"]) == (w, h)
        assert [o["method"] for o in entry["outputs"]] == ["gradcam", "cam"]
        for o in entry["outputs"]:
            arr = np.load(out / o["map"])
            assert arr.dtype == np.float32 and arr.shape == (h, w)
            assert np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0
            assert arr.max() > 0.9  # a real map, not a blank one
            with Image.open(out / o["overlay"]) as ov:
                assert ov.size == (w, h) and ov.mode == "RGB"


def test_manifest_lists_every_file_written(explained):
    out, files = explained
    m = _manifest(out)
    assert sorted(m["files"]) == sorted(p.name for p in out.iterdir())
    assert len(m["images"]) == len(files) == 4


def test_batching_does_not_change_maps(explained, photo_dir, tmp_path, cli):
    out, _ = explained
    coffee = photo_dir / "coffee.jpg"
    assert cli("explain", coffee, "-m", "gradcam", "-b", "1", "--out", tmp_path).code == 0
    single = np.load(tmp_path / "coffee_gradcam.npy")
    batched = np.load(out / "coffee_gradcam.npy")
    np.testing.assert_allclose(single, batched, atol=1e-4)


def test_target_by_name_index_and_top(photo_dir, tmp_path, cli):
    chelsea = photo_dir / "chelsea.png"
    r = cli("explain", chelsea, "--target", "Tabby_Cat", "--out", tmp_path / "name")
    assert r.code == 0, r.err
    m = _manifest(tmp_path / "name")
    assert m["target"] == 281 and m["images"][0]["explained"]["class"] == "tabby cat"
    assert "explained tabby cat" in r.out
    r = cli("explain", chelsea, "--target", "281", "--out", tmp_path / "index")
    assert r.code == 0
    by_index = np.load(tmp_path / "index" / "chelsea_gradcam.npy")
    np.testing.assert_allclose(np.load(tmp_path / "name" / "chelsea_gradcam.npy"), by_index, atol=1e-5)
    assert cli("explain", chelsea, "--target", "top", "--out", tmp_path / "top").code == 0
    top = _manifest(tmp_path / "top")["images"][0]
    assert top["explained"]["index"] == top["predicted"]["index"] != 281
    assert not np.allclose(np.load(tmp_path / "top" / "chelsea_gradcam.npy"), by_index, atol=1e-3)


def test_several_layers_one_file_each_or_fused(coffee_file, tmp_path, cli):
    r = cli("explain", coffee_file, "-l", "blocks.15", "-l", "head", "--out", tmp_path / "each")
    assert r.code == 0, r.err
    names = {p.name for p in (tmp_path / "each").iterdir()}
    assert {"coffee_gradcam_blocks.15.npy", "coffee_gradcam_head.npy", "coffee_gradcam_head.png"} <= names
    assert _manifest(tmp_path / "each")["layers"] == ["blocks.15", "head"]
    r = cli(
        "explain", coffee_file, "-l", "blocks.15", "-l", "head", "--fuse", "max", "--out", tmp_path / "fused"
    )
    assert r.code == 0
    m = _manifest(tmp_path / "fused")
    assert m["fuse"] == "max" and m["images"][0]["outputs"][0]["map"] == "coffee_gradcam.npy"
    fused = np.load(tmp_path / "fused" / "coffee_gradcam.npy")
    each = [np.load(tmp_path / "each" / f"coffee_gradcam_{n}.npy") for n in ("blocks.15", "head")]
    assert fused.shape == each[0].shape and fused.max() == pytest.approx(1.0, abs=1e-3)


def test_image_modes_are_converted(photos, tmp_path, cli):
    """Grayscale, gray+alpha, RGBA, 16-bit and palette files are explained like RGB ones."""
    rgb = photos["coffee"].resize((90, 60))
    images = {
        "gray": rgb.convert("L"),
        "gray_alpha": rgb.convert("LA"),
        "rgba": rgb.convert("RGBA"),
        "sixteen": Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257),
        "palette": rgb.convert("P", palette=Image.ADAPTIVE),
    }
    assert images["sixteen"].mode.startswith("I;16")
    paths = []
    for name, im in images.items():
        im.save(tmp_path / f"{name}.png")
        paths.append(tmp_path / f"{name}.png")
    r = cli("explain", *paths, "--out", tmp_path / "out")
    assert r.code == 0, r.err
    for name in images:
        arr = np.load(tmp_path / "out" / f"{name}_gradcam.npy")
        assert arr.shape == (60, 90) and arr.dtype == np.float32 and arr.max() > 0.9


def _huge_png(path: Path, width: int = 30000, height: int = 20000) -> Path:
    """A 60-byte PNG whose header claims width×height pixels (never decodable)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bad_files(tmp_path, photos):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    truncated = tmp_path / "cut.jpg"
    photos["coffee"].save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:2000])
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {
        "text": text,
        "truncated": truncated,
        "folder": folder,
        "huge": _huge_png(tmp_path / "huge.png", 12000, 10000),  # above featurelens' 100 MP limit
        "bomb": _huge_png(tmp_path / "bomb.png", 30000, 20000),  # above Pillow's own bomb limit too
    }


@pytest.mark.parametrize(
    ("kind", "fragments"),
    [
        ("missing", ["missing.jpg", "file not found"]),
        ("text", ["notes.jpg", "not an image"]),
        ("truncated", ["cut.jpg", "cannot read"]),
        ("folder", ["a_folder", "folder"]),
        ("huge", ["huge.png", "12000x10000", "limit"]),
        ("bomb", ["bomb.png", "too large"]),
    ],
)
def test_bad_image_files(kind, fragments, bad_files, tmp_path, cli):
    path = tmp_path / "missing.jpg" if kind == "missing" else bad_files[kind]
    r = cli("explain", path, "--out", tmp_path / "out")
    assert_one_line_error(r, *fragments)


def test_several_bad_files_fail_fast_listing_all(bad_files, coffee_file, tmp_path, cli):
    out = tmp_path / "out"
    r = cli(
        "explain", coffee_file, bad_files["text"], tmp_path / "gone.png", bad_files["folder"], "--out", out
    )
    assert_one_line_error(r, "3 of 4 images", "notes.jpg", "gone.png", "a_folder")
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--layer", "hed"], ["no layer named 'hed'", "close matches", "head"]),
        (["--layer", "blocks.15", "--layer", "blocks.99"], ["blocks.99"]),
        (["--method", "gradcamm"], ["unknown method", "gradcam", "scorecam"]),
        (["--model", "resnet9000"], ["unknown model", "efficientnet_lite0"]),
        (["--target", "expresso"], ["unknown class name", "espresso"]),
        (["--target", "1000"], ["out of range"]),
        (["--target", "sunglasses"], ["ambiguous"]),
        (["--alpha", "3"], ["alpha"]),
        (["--layer", "fc"], ["'fc'", "[B, C, H, W]"]),
    ],
)
def test_bad_options(args, fragments, coffee_file, tmp_path, cli):
    assert_one_line_error(cli("explain", coffee_file, *args, "--out", tmp_path / "out"), *fragments)


def test_output_path_that_is_a_file(coffee_file, cli):
    assert_one_line_error(cli("explain", coffee_file, "--out", coffee_file), "not a folder")


@pytest.mark.parametrize(
    ("model", "args", "fragments"),
    [
        ("no_fc.pt", ["--trust", "-m", "cam"], ["CAM needs a fully connected layer"]),
        ("no_conv.pt", ["--trust"], ["no layer with a spatial"]),
        ("no_conv.pt", [], ["--trust"]),
        ("state_dict.pt", [], ["state dict"]),
        ("scripted.pt", [], ["TorchScript"]),
    ],
)
def test_models_that_do_not_fit(model, args, fragments, odd_models, coffee_file, tmp_path, cli):
    r = cli("explain", coffee_file, "--model", odd_models / model, *args, "--out", tmp_path / "out")
    assert_one_line_error(r, *fragments)


def test_gradcam_runs_on_a_model_without_fc_head(odd_models, coffee_file, tmp_path, cli):
    r = cli("explain", coffee_file, "--model", odd_models / "no_fc.pt", "--trust", "--out", tmp_path / "out")
    assert r.code == 0, r.err
    m = _manifest(tmp_path / "out")
    assert m["layers"] == ["2"] and m["images"][0]["predicted"]["class"].startswith("class ")


@pytest.mark.slow
def test_console_script_in_a_subprocess(coffee_file, tmp_path, bad_files):
    exe = Path(sys.executable).with_name("featurelens")
    assert exe.exists(), exe
    done = subprocess.run(
        [str(exe), "explain", str(coffee_file), "-m", "gradcam", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "coffee.jpg: espresso" in done.stdout
    assert _manifest(tmp_path / "out")["images"][0]["predicted"]["class"] == "espresso"
    bad = subprocess.run(
        [str(exe), "explain", str(bad_files["text"])], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("featurelens: error: ")
    ok = subprocess.run(
        [sys.executable, "-m", "featurelens.cli.main", "--help"], capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0 and "explain" in ok.stdout and "inspect" in ok.stdout and "demo" in ok.stdout


def test_smoothing_flags_reach_the_explainer(lite0, coffee_file, tmp_path, cli):
    """--aug-smooth/--eigen-smooth/--sess/--fuse refine give the Python API's maps, at the image size."""
    from featurelens.api import Explainer
    from featurelens.imaging import load_image

    r = cli("explain", coffee_file, "--aug-smooth", "--eigen-smooth", "--out", tmp_path / "s")
    assert r.code == 0, r.err
    assert _manifest(tmp_path / "s")["smoothing"] == ["aug_smooth", "eigen_smooth"]
    saved = np.load(tmp_path / "s" / "coffee_gradcam.npy")
    pil = load_image(coffee_file)
    exp = Explainer(lite0.model, lite0.resolve_default_layer()).explain(
        lite0.prepare([pil]), "gradcam", aug_smooth=True, eigen_smooth=True
    )
    np.testing.assert_allclose(saved, exp.map_at(0, (pil.height, pil.width)), atol=1e-4)
    plain = cli("explain", coffee_file, "--out", tmp_path / "p")
    assert plain.code == 0 and not np.allclose(np.load(tmp_path / "p" / "coffee_gradcam.npy"), saved, atol=1e-2)
    r = cli("explain", coffee_file, "-l", "blocks.15", "-l", "head", "--fuse", "refine", "--sess", "--out", tmp_path / "r")
    assert r.code == 0, r.err
    m = _manifest(tmp_path / "r")
    assert m["fuse"] == "refine" and m["smoothing"] == ["sess"]
