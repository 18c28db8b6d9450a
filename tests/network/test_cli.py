"""``featurelens network`` / ``featurelens bundle`` on real photos with the real model."""

from __future__ import annotations

import json

import pytest

from featurelens.cli.main import main


@pytest.mark.slow
def test_cli_network_fast_on_real_photos_then_validate_and_view(photo_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    images = [str(photo_dir / "chelsea.png"), str(photo_dir / "coffee.jpg")]
    code = main(["network", *images, "--layers", "head", "--fast", "--out", str(out),
                 "--stability", "2", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "2 images x 1 layers" in text and "index.html" in text
    assert "median ARI 1.00 over 2 layers; 0 below 0.8" in text
    data = json.loads((out / "bundle.json").read_text())
    assert data["params"]["mode"] == "stable" and data["method"]["mode"] == "stable"  # --fast is an alias
    assert data["layers"][0]["name"] == "head.act" and data["layers"][0]["activation"] == "ReLU6"
    assert (out / "index.html").is_file()  # the viewer is written by default
    assert [im["id"] for im in data["images"]] == ["chelsea", "coffee"]
    assert data["images"][0]["predicted_class"]  # a real ImageNet class name
    assert all(im["clusters"] for im in data["images"])
    assert data["params"]["stability_runs"] == 2
    for im in data["images"]:  # the fast mode does not move under float-sized noise
        assert [(s["name"], s["stability"]) for s in im["layer_stats"]] == [("head.act", 1.0)]
    assert main(["bundle", "validate", str(out)]) == 0
    assert main(["bundle", "view", str(out)]) == 0
    assert "stability ARI" in (out / "index.html").read_text()
    # never overwrite an existing bundle
    assert main(["network", *images, "--layers", "head", "--fast", "--out", str(out), "--quiet"]) == 2
    assert "already holds a bundle" in capsys.readouterr().err


def test_cli_bad_layer_name_is_listed(photo_dir, tmp_path, capsys):
    code = main(["network", str(photo_dir / "chelsea.png"), "--layers", "head,blocks.15.projekt", "--out",
                 str(tmp_path / "b"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no layer named 'blocks.15.projekt'" in err and "blocks.15.project.conv" in err


def test_cli_negative_stability_runs_is_a_usage_error(photo_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["network", str(photo_dir / "chelsea.png"), "--stability", "-1", "--out", str(tmp_path / "b")])
    assert exc.value.code == 2
    assert "--stability: must be at least 0, got -1" in capsys.readouterr().err


def test_cli_empty_image_list_and_bad_image(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["network", str(empty), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "no images given" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["network", str(bad), "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "bad.jpg" in capsys.readouterr().err


def test_cli_bundle_validate_reports_problems(tmp_path, capsys):
    (tmp_path / "bundle.json").write_text(json.dumps({"schema": "featurelens.network-bundle", "version": 99}))
    assert main(["bundle", "validate", str(tmp_path)]) == 1
    assert "version 99 is not supported" in capsys.readouterr().err
    assert main(["bundle", "view", str(tmp_path)]) == 2


def test_cli_unreachable_ray_address_fails_fast_with_one_line(photo_dir, tmp_path, capsys):
    """Nothing listens on the port: a clear error and exit 2 at once (Ray alone retries for minutes)."""
    import socket

    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["network", str(photo_dir / "chelsea.png"), "--ray-address", f"127.0.0.1:{port}",
                 "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot join the Ray cluster at 127.0.0.1:{port}: nothing answers there" in err
    assert "Traceback" not in err
