"""`featurelens evaluate` and the evaluation table: bad input, outputs, and a real-model run."""

from __future__ import annotations

import csv

import pytest
import torch
from metric_models import RegionMean

from featurelens.cli.main import main
from featurelens.metrics import MetricError, class_score_fn, evaluate_maps, resolve_metrics
from featurelens.metrics.output import write_outputs
from featurelens.metrics.run import read_boxes, read_pairs


def test_resolve_metrics_aliases_and_unknown():
    assert resolve_metrics("Deletion, insertion,ADCC,ebpg") == [
        "deletion",
        "insertion",
        "adic",
        "energy-pointing",
    ]
    with pytest.raises(MetricError) as err:
        resolve_metrics("deletion,faithfulness")
    assert "faithfulness" in str(err.value) and "insertion" in str(err.value) and "sanity" in str(err.value)


def test_evaluate_maps_table_with_explain_fn_and_baselines(tmp_path, region, positive_inputs):
    score = class_score_fn(RegionMean(region), torch.zeros(4, dtype=torch.long), kind="logit")
    ideal = region.expand(4, 16, 16).clone()
    calls = []

    def explain_fn(x):
        calls.append(x.shape[0])
        return -ideal[: x.shape[0]]

    boxes = [(7, 3, 12, 9)] * 4  # the region as a box
    table = evaluate_maps(
        score,
        positive_inputs,
        {"ideal": ideal, "reverse": explain_fn},
        ["deletion", "insertion", "adic", "pointing", "energy-pointing"],
        steps=8,
        baseline="constant",
        boxes=boxes,
    )
    assert [r.method for r in table.rows] == ["ideal", "reverse", "random", "centre"]
    assert calls == [4]
    assert table.best("deletion_auc") == "ideal" and table.best("insertion_auc") == "ideal"
    assert table.value("ideal", "pointing") == 1.0 and table.value(
        "ideal", "energy_pointing"
    ) == pytest.approx(1.0)
    assert table.value("reverse", "energy_pointing") == 0.0
    assert table.value("ideal", "average_drop") == pytest.approx(0.0, abs=1e-4)
    md = table.to_markdown()
    assert "| ideal |" in md and "random (baseline)" in md and "**" in md
    files = write_outputs(
        table, tmp_path, sample_names=["a", "b", "c", "d"], skipped=[("x.txt", "not an image file")]
    )
    rows = list(csv.DictReader(open(files["csv"])))
    assert [r["method"] for r in rows] == ["ideal", "reverse", "random", "centre"]
    assert float(rows[0]["deletion_auc"]) == pytest.approx(table.value("ideal", "deletion_auc"), rel=1e-5)
    assert len(list(csv.DictReader(open(files["per_image"])))) == 16
    html = files["html"].read_text()
    assert "x.txt" in html and "data:image/png;base64" in html
    assert files["curves_deletion"].stat().st_size > 1000


def test_evaluate_maps_needs_boxes_for_pointing(region, positive_inputs):
    score = class_score_fn(RegionMean(region), torch.zeros(4, dtype=torch.long))
    with pytest.raises(MetricError, match="boxes"):
        evaluate_maps(score, positive_inputs, {"m": torch.rand(4, 16, 16)}, ["pointing"])


def test_pairs_file_missing_files_listed(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_a,image_b\na.jpg,missing1.jpg\nmissing2.png,a.jpg\n")
    with pytest.raises(MetricError) as err:
        read_pairs(pairs)
    assert (
        "missing1.jpg" in str(err.value)
        and "missing2.png" in str(err.value)
        and "2 file(s)" in str(err.value)
    )


def test_boxes_file_scaled_to_input(tmp_path):
    f = tmp_path / "boxes.csv"
    f.write_text("image,x0,y0,x1,y1\ncat.jpg,10,20,50,40\ncat.jpg,0,0,1,1\n")
    assert read_boxes(f, {"cat.jpg": (100, 200)}, (224, 224)) == [
        [[22.4, 22.4, 112.0, 44.8], [0.0, 0.0, 2.24, 1.12]]
    ]
    with pytest.raises(MetricError, match=r"dog\.jpg"):
        read_boxes(f, {"cat.jpg": (100, 200), "dog.jpg": (10, 10)}, (224, 224))


def run_cli(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(
        capsys, "--images", tmp_path, "--metrics", "deletion,bogus", "--out", tmp_path / "o"
    )
    assert code == 2 and "bogus" in err and "valid metrics: deletion, insertion, adic" in err
    code, _, err = run_cli(
        capsys, "--images", empty, "--methods", "gradcam,nosuchcam", "--out", tmp_path / "o"
    )
    assert code == 2 and "nosuchcam" in err and "gradcam" in err and "scorecam" in err
    (empty / "readme.txt").write_text("hello")
    code, _, err = run_cli(capsys, "--images", empty, "--out", tmp_path / "o")
    assert code == 2 and "no usable image" in err and "1 other file(s) skipped" in err
    code, _, err = run_cli(capsys, "--images", tmp_path / "nope", "--out", tmp_path / "o")
    assert code == 2 and "not a folder" in err
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("ghost_a.jpg,ghost_b.jpg\n")
    code, _, err = run_cli(capsys, "--pairs", pairs, "--out", tmp_path / "o")
    assert code == 2 and "ghost_a.jpg" in err and "ghost_b.jpg" in err
    code, _, err = run_cli(capsys, "--out", tmp_path / "o")
    assert code == 2 and "--images" in err


@pytest.mark.slow
def test_cli_real_photos_real_model(tmp_path, capsys, photos):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("coffee", "chelsea"):
        photos[name].save(folder / f"{name}.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.png").write_bytes(b"\x89PNG not really")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\ncoffee.jpg,0,0,600,400\nchelsea.jpg,0,0,451,300\n")  # whole images
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys,
        "--images",
        folder,
        "--methods",
        "gradcam",
        "--metrics",
        "deletion,adic,pointing",
        "--boxes",
        boxes,
        "--steps",
        "2",
        "--out",
        out,
    )
    assert code == 0, err
    assert "gradcam" in stdout and "random (baseline)" in stdout
    assert "2 image(s) evaluated; skipped 2 file(s)" in stdout
    for name in ("results.csv", "per_image.csv", "results.md", "curves_deletion.png", "index.html"):
        assert (out / name).is_file(), name
    rows = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {"gradcam", "random", "centre"}
    assert float(rows["gradcam"]["pointing"]) == 1.0  # the box is the whole image
    assert 0 <= float(rows["gradcam"]["deletion_auc"]) <= 1
    assert "notes.txt" in (out / "results.md").read_text() and "fake.png" in (out / "index.html").read_text()


@pytest.mark.slow
def test_cli_similarity_pairs_real_model(tmp_path, capsys, photos):
    pytest.importorskip("featurelens.similarity.pair")
    for name in ("coffee", "chelsea"):
        photos[name].save(tmp_path / f"{name}.png")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_a,image_b\ncoffee.png,chelsea.png\nchelsea.png,chelsea.png\n")
    out = tmp_path / "sim"
    code, _, err = run_cli(
        capsys,
        "--pairs",
        pairs,
        "--methods",
        "sfam",
        "--metrics",
        "deletion,adic",
        "--steps",
        "2",
        "--out",
        out,
    )
    assert code == 0, err
    rows = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {"sfam", "random", "centre"}
    per = list(csv.DictReader(open(out / "per_image.csv")))
    assert {r["sample"] for r in per} == {"coffee.png~chelsea.png", "chelsea.png~chelsea.png"}
    code, _, err = run_cli(capsys, "--pairs", pairs, "--metrics", "pointing", "--out", out)
    assert code == 2 and "not available in similarity mode" in err
