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
    from featurelens.metrics.distributed import evaluate_folder_batched
    from featurelens.metrics.run import evaluate_classifier_folder
    from featurelens.network.executor import RayExecutor

    (photo_dir.parent / "evalset").mkdir(exist_ok=True)
    folder = photo_dir.parent / "evalset"
    for p in sorted(photo_dir.iterdir())[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"no")
    metrics = ["deletion", "insertion", "adic"]
    one = evaluate_classifier_folder(lite0, folder, ["gradcam"], metrics, steps=5)
    ray = evaluate_folder_batched("efficientnet_lite0", folder, ["gradcam"], metrics, executor=RayExecutor(2),
                                  images_per_batch=1, threads=1, steps=5)
    assert ray.sample_names == one.sample_names and len(ray.sample_names) == 2
    assert [s[0] for s in ray.skipped] == ["broken.jpg"]
    for col in ("deletion_auc", "insertion_auc", "average_drop", "increase_confidence"):
        a, b = ray.table.row("gradcam").per_sample[col], one.table.row("gradcam").per_sample[col]
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
        assert ray.table.value("gradcam", col) == pytest.approx(float(np.nanmean(np.asarray(b))), rel=1e-4, abs=1e-5)
    assert ray.table.row("gradcam").curves["deletion"].scores.shape == (2, 6)
    # the CLI path writes the usual outputs
    out = tmp_path / "eval"
    assert main(["evaluate", "--images", str(folder), "--steps", "5", "--ray", "--ray-workers", "2",
                 "--images-per-batch", "1", "--out", str(out)]) == 0
    assert "2 image(s) evaluated; skipped 1 file(s): broken.jpg" in capsys.readouterr().out
    assert (out / "results.csv").is_file() and (out / "index.html").is_file()
    assert main(["evaluate", "--images", str(folder), "--metrics", "sanity", "--ray", "--out", str(out)]) == 2
