"""``featurelens evaluate --ray``: batches of a folder on 2 Ray workers give the single in-process run's
per-image metrics for every method (the random baseline is drawn per batch, so it is not compared)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from featurelens.cli.main import main


@pytest.fixture(scope="module")
def ray_eval(ray_session):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_session


@pytest.mark.slow
def test_evaluate_on_ray_equals_the_in_process_run(ray_eval, lite0, photo_dir, tmp_path, capsys):
    import csv

    from featurelens.metrics.distributed import evaluate_folder_batched
    from featurelens.metrics.run import evaluate_classifier_folder
    from featurelens.network.executor import InProcessExecutor

    (photo_dir.parent / "evalset").mkdir(exist_ok=True)
    folder = photo_dir.parent / "evalset"
    for p in sorted(photo_dir.iterdir())[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"no")
    metrics = ["deletion", "insertion", "adic"]
    cols = ("deletion_auc", "insertion_auc", "average_drop", "increase_confidence")
    one = evaluate_classifier_folder(lite0, folder, ["gradcam"], metrics, steps=5)
    # batches of 1 image joined by the driver (in-process executor: the merging)
    batched = evaluate_folder_batched("efficientnet_lite0", folder, ["gradcam"], metrics,
                                      executor=InProcessExecutor(), images_per_batch=1, steps=5)
    assert batched.sample_names == one.sample_names and len(batched.sample_names) == 2
    assert [s[0] for s in batched.skipped] == ["broken.jpg"]
    for col in cols:
        a, b = batched.table.row("gradcam").per_sample[col], one.table.row("gradcam").per_sample[col]
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
        assert batched.table.value("gradcam", col) == pytest.approx(float(np.nanmean(np.asarray(b))), rel=1e-4,
                                                                    abs=1e-5)
    assert batched.table.row("gradcam").curves["deletion"].scores.shape == (2, 6)
    # the CLI on 2 Ray workers (one image each) writes the in-process per-image values
    out = tmp_path / "eval"
    assert main(["evaluate", "--images", str(folder), "--steps", "5", "--ray", "--ray-workers", "2",
                 "--images-per-batch", "1", "--out", str(out)]) == 0
    assert "2 image(s) evaluated; skipped 1 file(s): broken.jpg" in capsys.readouterr().out
    assert (out / "results.csv").is_file() and (out / "index.html").is_file()
    rows = [r for r in csv.DictReader((out / "per_image.csv").open()) if r["method"] == "gradcam"]
    assert [r["sample"] for r in rows] == one.sample_names
    for col in cols:
        np.testing.assert_allclose([float(r[col]) for r in rows],
                                   np.asarray(one.table.row("gradcam").per_sample[col]), rtol=1e-4, atol=1e-5)
    assert main(["evaluate", "--images", str(folder), "--metrics", "sanity", "--ray", "--out", str(out)]) == 2
