"""``featurelens similarity/retrieve --model dlib_face`` on the shipped real photos, and its one-line errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurelens.cli.main import main
from featurelens.similarity.faces import face_photo

pytest.importorskip("dlib")
sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
from cli_helpers import CliResult, assert_one_line_error


def _run(capsys, *args: str) -> CliResult:
    code = main(list(args))
    cap = capsys.readouterr()
    return CliResult(code, cap.out, cap.err)


@pytest.mark.slow
def test_similarity_same_and_different(tmp_path, capsys):
    a, b, c = face_photo("obama"), face_photo("obama3"), face_photo("biden")
    r = _run(capsys, "similarity", str(a), str(b), "--model", "dlib_face", "--out", str(tmp_path / "same"))
    assert r.code == 0 and "same person" in r.out
    m = json.loads((tmp_path / "same" / "manifest.json").read_text())
    assert m["metric"] == "euclidean" and m["threshold"] == 0.6 and m["decision"] == "same" and m["distance"] < 0.6
    for side, photo in (("a", a), ("b", b)):
        f = m["files"][side]
        arr = np.load(tmp_path / "same" / f["map"])
        assert arr.shape == Image.open(photo).size[::-1]  # the photo's original size
        assert Image.open(tmp_path / "same" / f["overlay"]).size == Image.open(photo).size
        x0, y0, x1, y1 = f["box"]
        inside = arr[max(y0, 0):y1, max(x0, 0):x1].sum()
        assert inside > 0.3 * arr.sum()  # the map lies on the face
    r = _run(capsys, "similarity", str(a), str(c), "--model", "dlib_face", "--threshold", "0.5", "--out", str(tmp_path / "diff"))
    m = json.loads((tmp_path / "diff" / "manifest.json").read_text())
    assert r.code == 0 and m["decision"] == "different" and m["distance"] > 0.6 and m["threshold"] == 0.5
    r = _run(capsys, "similarity", str(a), str(c), "--model", "dlib_face", "--metric", "cosine", "--method", "gradcam",
             "--out", str(tmp_path / "cos"))
    m = json.loads((tmp_path / "cos" / "manifest.json").read_text())
    assert r.code == 0 and -1 <= m["similarity"] <= 1 and m["decision"] is None


@pytest.mark.slow
def test_errors(tmp_path, capsys):
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (300, 300), (90, 120, 150)).save(blank)
    a = face_photo("obama")
    assert_one_line_error(_run(capsys, "similarity", str(a), str(blank), "--model", "dlib_face", "--out", str(tmp_path / "o")),
                          "blank.jpg", "no face found")
    assert_one_line_error(_run(capsys, "similarity", str(a), str(a), "--model", "dlib_face", "--face", "3",
                               "--out", str(tmp_path / "o")), "--face 3", "1 face(s) found")
    assert_one_line_error(_run(capsys, "similarity", str(a), str(a), "--model", "dlib_face", "--face", "x",
                               "--out", str(tmp_path / "o")), "--face")


@pytest.mark.slow
def test_retrieve_ranks_by_distance(tmp_path, capsys):
    g = tmp_path / "faces"
    g.mkdir()
    for n in ("obama2", "obama3", "biden"):
        shutil.copy(face_photo(n), g / f"{n}.jpg")
    Image.new("RGB", (200, 200), (10, 200, 10)).save(g / "noface.png")
    r = _run(capsys, "retrieve", str(face_photo("obama")), "--gallery", str(g), "--model", "dlib_face", "-k", "3",
             "--no-cache", "--out", str(tmp_path / "r"))
    assert r.code == 0, r.err
    assert "noface.png" in r.err  # skipped with a warning
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    scores = [h["score"] for h in m["hits"]]
    assert scores == sorted(scores) and Path(m["hits"][-1]["file"]).stem == "biden"
    assert m["skipped_count"] == 1 and "rank1_hit.png" in m["files"]


@pytest.mark.slow
def test_demo_face_part(tmp_path):
    from featurelens.demo import DemoContext
    from featurelens.similarity.demo import SUBDIR, _faces_part

    (tmp_path / SUBDIR).mkdir()
    files: list[str] = []
    summary: dict = {}
    html = _faces_part(DemoContext(tmp_path, quick=True, log=lambda s: None), tmp_path / SUBDIR, files, summary)
    assert summary["face_decision_obama_obama2"] == "same" and summary["face_decision_obama_obama3"] == "same"
    assert summary["face_decision_obama_biden"] == "different" and summary["face_distance_obama_biden"] > 0.6
    assert len(files) == 6 and all((tmp_path / f).is_file() for f in files)
    assert "same person" in html and "different" in html
