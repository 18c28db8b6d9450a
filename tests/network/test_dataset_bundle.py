"""``featurelens network DATASET`` into a version-3 (sharded) bundle on the real model and real photos:
dataset selection and class matching, content equal to the pipeline's, SIGKILL + --resume, a concurrent
writer refused, Ray (2 workers, one killed mid-batch) = in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featurelens.cli.main import main
from featurelens.network.bundle import load_bundle, validate_bundle
from featurelens.network.shards import ShardStore

LAYERS = ["--layers", "head", "--fast"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory, photos):
    """ROOT/<class>/<image>: labels as ImageNet names spelled otherwise, one unknown label, one broken file.
    ``tabby_cat/chelsea_aug_crop.jpg`` is an augmented view (a crop) of the real photo, marked by its name."""
    root = tmp_path_factory.mktemp("tree")
    for folder, name, im in [("tabby_cat", "chelsea.jpg", photos["chelsea"]),
                             ("tabby_cat", "chelsea_aug_crop.jpg", photos["chelsea"].crop((40, 0, 300, 260))),
                             ("Coffee_Mug", "coffee.jpg", photos["coffee"]),
                             ("not_a_class", "astronaut.png", photos["astronaut"]),
                             ("spaceship", "rocket.jpg", photos["rocket"])]:
        (root / folder).mkdir(exist_ok=True)
        im.save(root / folder / name)
    (root / "tabby_cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def content(bundle_dir: Path) -> dict:
    """Per image: predicted index and, per cluster, (layer, index, channels, weight, effect, feature map)."""
    b = load_bundle(bundle_dir)
    return {im.id: (im.predicted_index, im.true_class,
                    [(c.layer, c.index, c.channels, c.weight, c.effect, b.load_map(c)) for c in im.clusters])
            for im in b.images}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k][:2] == b[k][:2]
        assert [c[:3] for c in a[k][2]] == [c[:3] for c in b[k][2]]
        for x, y in zip(a[k][2], b[k][2]):
            np.testing.assert_allclose(x[3], y[3], rtol=1e-4, atol=1e-4)  # weights
            np.testing.assert_allclose(x[4], y[4], rtol=1e-3, atol=1e-3)  # effects
            np.testing.assert_allclose(x[5], y[5], atol=2e-3)  # maps (float16 in the shards)


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    """An uninterrupted in-process run of the CLI (shards of 2 images, effects on)."""
    out = tmp_path_factory.mktemp("ref") / "bundle"
    assert main(["network", str(tree), *LAYERS, "--shard-size", "2", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.slow
def test_dataset_tree_classes_skipped_and_content_equal_to_the_pipeline(tree, reference, lite0, photos, capsys):
    from featurelens.network.pipeline import NetworkParams, explain_network

    data = json.loads((reference / "bundle.json").read_text())
    assert data["version"] == 3 and data["complete"] is True and data["storage"]["encoding"] == "float16"
    ids = [im["id"] for im in data["images"]]
    assert ids == ["Coffee_Mug_coffee", "not_a_class_astronaut", "spaceship_rocket", "tabby_cat_chelsea",
                   "tabby_cat_chelsea_aug_crop"]
    by_id = {im["id"]: im for im in data["images"]}
    # labels matched case-insensitively with '_' = space; an unknown label is reported and gets no class
    assert by_id["tabby_cat_chelsea"]["true_class"] == "tabby cat" and by_id["tabby_cat_chelsea"]["label"] == "tabby_cat"
    assert by_id["Coffee_Mug_coffee"]["true_class"] == "coffee mug"
    assert by_id["not_a_class_astronaut"]["true_class"] is None
    problems = data["dataset"]["label_problems"]
    assert any("'not_a_class' (1 image) matches no class" in p for p in problems)
    assert any("'spaceship'" in p for p in problems)
    # the broken image and the stray file are skipped and listed, not fatal
    where = {Path(s["where"]).name: s["reason"] for s in data["skipped"]}
    assert set(where) == {"broken.jpg", "notes.txt"} and "not an image" in where["broken.jpg"]
    # the layout: bundle.json + 2 files per shard of 2 images; no file per map
    files = sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*") if p.is_file())
    assert len([f for f in files if f.startswith("shards/")]) == 6 and not any(f.endswith(".png") for f in files)
    assert validate_bundle(reference) == []
    # the stored content is the pipeline's, maps to float16 precision; image maps rendered on demand
    b = load_bundle(reference)
    im = b.image("tabby_cat_chelsea")
    from featurelens.imaging import load_image

    photo_file = load_image(tree / "tabby_cat" / "chelsea.jpg")
    x = lite0.prepare([photo_file])
    res = explain_network(lite0.model, x, ["head.act"], None, NetworkParams(mode="stable"))[0]
    got = [c for c in im.clusters if c.layer == "head.act"]
    assert [c.channels for c in got] == [c.channels for c in res.layers[0].clusters] and got
    for c, r in zip(got, res.layers[0].clusters):
        assert c.map_png is None and c.overlay_png is None
        np.testing.assert_allclose(c.weight, r.weight, rtol=1e-5)
        np.testing.assert_allclose(c.effect, r.effect, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(b.load_map(c), r.feature_map, rtol=2.0**-11, atol=1e-7)
        np.testing.assert_allclose(b.load_image_map(c), r.image_map, atol=2e-3)
        assert b.load_image_map(c, size=(100, 120)).shape == (100, 120)
        assert b.overlay_image(c).size == (224, 224)
    photo = np.asarray(b.display_image(im), dtype=np.float32)
    assert photo.shape == (224, 224, 3)
    assert np.abs(photo - lite0.model_view(photo_file).astype(np.float32)).mean() < 4.0  # JPEG q88

    # --per-class 1 and --limit pick deterministically; a class map overrides the name matching
    cmap = tree.parent / "classes.csv"
    cmap.write_text("label,class\nspaceship,space shuttle\nnot_a_class,812\n")
    out = tree.parent / "sel"
    args = ["network", str(tree), *LAYERS, "--no-effect", "--per-class", "1", "--limit", "3", "--select-seed", "1",
            "--class-map", str(cmap), "--out", str(out), "--quiet", "--no-viewer"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "skipped 2 file(s)" in err and "broken.jpg" in err and "matches no class" not in err
    sel = load_bundle(out)
    assert len(sel.images) == 3 and len({im.label for im in sel.images}) == 3
    assert all(im.true_class is not None for im in sel.images)
    mapped = {"spaceship": "space shuttle", "not_a_class": lite0.class_names[812]}
    assert all(im.true_class == mapped[im.label] for im in sel.images if im.label in mapped)
    again = tree.parent / "sel2"
    assert main([*args[:-4], "--out", str(again), "--quiet", "--no-viewer"]) == 0
    assert [im.id for im in load_bundle(again).images] == [im.id for im in sel.images]
    # an existing bundle is never overwritten; a bad class map is one line
    assert main(args) == 2 and "already holds a bundle" in capsys.readouterr().err
    cmap.write_text("spaceship,no such class\n")
    assert main([*args[:-4], "--out", str(tree.parent / "sel3"), "--quiet"]) == 2
    assert "'no such class'" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run_and_a_second_writer_is_refused(tree, reference, tmp_path,
                                                                                       capsys):
    out = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "featurelens.cli.main", "network", str(tree), *LAYERS, "--shard-size", "2",
           "--out", str(out), "--quiet", "--no-viewer"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not ShardStore(out / "shards").keys():
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        assert main(["network", str(tree), *LAYERS, "--shard-size", "2", "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"being written by another run (pid {child.pid}" in err[0]
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    done = ShardStore(out / "shards").done_ids()
    assert 1 <= len(done) < 5
    assert json.loads((out / "bundle.json").read_text())["complete"] is False
    assert any("resume it" in p for p in validate_bundle(out))
    # other settings are refused; the same ones resume
    assert main(["network", str(tree), "--layers", "head", "--shard-size", "2", "--out", str(out), "--resume"]) == 2
    assert "cannot resume with other settings" in capsys.readouterr().err
    assert main(["network", str(tree), *LAYERS, "--shard-size", "2", "--out", str(out), "--resume", "--quiet"]) == 0
    assert f"resumed: {len(done)} image(s)" in capsys.readouterr().err
    assert validate_bundle(out) == []
    assert_same(content(out), content(reference))


class DieOnce:
    """The real per-batch work, except that the worker process dies (``os._exit``) the first time it
    starts the batch holding ``victim`` (``marker`` records that it did)."""

    def __init__(self, inner, victim: str, marker: str) -> None:
        self.inner, self.victim, self.marker = inner, victim, marker

    def __call__(self, state, image_id, payload):
        return self.inner(state, image_id, payload)

    def many(self, state, ids, payloads):
        if self.victim in ids and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return self.inner.many(state, ids, payloads)


@pytest.fixture(scope="module")
def ray_here(ray_session):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_session


@pytest.mark.slow
def test_ray_two_workers_one_killed_mid_batch_gives_the_in_process_bundle(ray_here, tree, reference, tmp_path,
                                                                          monkeypatch):
    import featurelens.network.build as build

    # the CLI path on Ray (2 workers, 1 torch thread each)
    out = tmp_path / "ray"
    assert main(["network", str(tree), *LAYERS, "--shard-size", "2", "--out", str(out), "--quiet", "--ray",
                 "--ray-workers", "2"]) == 0
    assert validate_bundle(out) == []
    assert_same(content(out), content(reference))
    pids = {e["meta"]["cost"]["pid"] for k in ShardStore(out / "shards").keys()
            for e in ShardStore(out / "shards").index(k)["images"]}
    assert os.getpid() not in pids and len(pids) == 2
    # a worker dies in the middle of the batch holding the chelsea crop: that batch is retried on a fresh
    # worker, no image is stored twice, and the content is the same
    marker = tmp_path / "died"
    real = build.ExplainImages
    monkeypatch.setattr(build, "ExplainImages",
                        lambda *a, **k: DieOnce(real(*a, **k), "tabby_cat_chelsea_aug_crop", str(marker)))
    out2 = tmp_path / "ray-killed"
    assert main(["network", str(tree), *LAYERS, "--shard-size", "2", "--out", str(out2), "--quiet", "--ray",
                 "--ray-workers", "2", "--gather-shards"]) == 0
    assert marker.exists()
    assert validate_bundle(out2) == []  # validate_shards: no id stored twice
    assert_same(content(out2), content(reference))
