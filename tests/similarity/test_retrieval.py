"""Retrieval with an on-disk embedding cache, few-shot prototypes, and the CLI commands."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from featurelens.cli.main import main
from featurelens.similarity.retrieval import (
    EmptyGalleryError,
    explain_prototype,
    explain_retrieval,
    few_shot,
    index_gallery,
    rank,
)


@pytest.fixture(scope="module")
def shapes_gallery(tmp_path_factory, shapes_data):
    """20 held-out shapes as PNG files (2 per class) plus one broken file and one text file."""
    x, y = shapes_data
    d = tmp_path_factory.mktemp("gallery")
    for c in range(10):
        for j, i in enumerate((y == c).nonzero()[0][1:3]):
            Image.fromarray(x[i]).save(d / f"c{c}_{j}.png")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    (d / "notes.txt").write_text("not an image")
    q = d.parent / "query.png"
    Image.fromarray(x[(y == 4).nonzero()[0][0]]).save(q)
    return d, q


def test_index_cache_and_skips(shapes_embedder, shapes_gallery, tmp_path):
    d, _ = shapes_gallery
    with pytest.warns(UserWarning, match="broken.png"):
        idx = index_gallery(shapes_embedder, d, cache_dir=tmp_path, batch_size=7)
    assert len(idx.paths) == 20 and idx.computed == 20 and idx.cache_hits == 0
    assert {p.name for p, _ in idx.skipped} == {"broken.png", "notes.txt"}
    direct = shapes_embedder.embed(shapes_embedder.prepare(idx.paths))
    assert torch.allclose(idx.embeddings, direct, atol=1e-5)
    with pytest.warns(UserWarning):
        again = index_gallery(shapes_embedder, d, cache_dir=tmp_path)
    assert again.computed == 0 and again.cache_hits == 20
    assert torch.equal(again.embeddings, idx.embeddings)
    # a changed file (new mtime/size) is embedded again, the rest comes from the cache
    target = d / "c0_0.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.warns(UserWarning):
        third = index_gallery(shapes_embedder, d, cache_dir=tmp_path)
    assert third.computed == 1 and third.cache_hits == 19


def test_empty_gallery(shapes_embedder, tmp_path):
    (tmp_path / "g").mkdir()
    with pytest.raises(EmptyGalleryError, match="no readable image"):
        index_gallery(shapes_embedder, tmp_path / "g", use_cache=False)


def test_rank_orders_by_metric():
    q = torch.tensor([1.0, 0.0])
    g = torch.tensor([[0.0, 1.0], [2.0, 0.1], [1.0, 0.0]])
    assert rank(q, g, "cosine")[1].tolist() == [2, 1, 0]
    assert rank(q, g, "euclidean")[1].tolist() == [2, 1, 0]
    assert rank(q, torch.tensor([[3.0, 0.0], [1.0, 0.5]]), "euclidean")[1].tolist() == [1, 0]


@pytest.mark.parametrize("method", ["sfam", "gradcam"])
def test_explain_retrieval_matches_pairwise(shapes_embedder, shapes_gallery, method):
    from featurelens.imaging import load_image
    from featurelens.similarity.pair import explain_pair

    d, q = shapes_gallery
    with pytest.warns(UserWarning):
        idx = index_gallery(shapes_embedder, d, use_cache=False)
    res = explain_retrieval(shapes_embedder, q, idx, top_k=3, method=method)
    assert [h.rank for h in res.hits] == [1, 2, 3]
    assert res.hits[0].score >= res.hits[1].score >= res.hits[2].score
    top = res.hits[1]
    ex = explain_pair(shapes_embedder, load_image(q), load_image(top.path), method)
    assert torch.allclose(ex.maps_a[0], top.map_query, atol=1e-5)
    assert torch.allclose(ex.maps_b[0], top.map_hit, atol=1e-5)
    assert abs(float(ex.score[0]) - top.score) < 1e-5


def test_few_shot_prototype(shapes_embedder, shapes_data):
    from featurelens.models.metric_shapes import to_tensor

    x, y = shapes_data
    supports = {str(c): to_tensor(x[(y == c).nonzero()[0][1:6]]) for c in range(10)}
    correct = 0
    for c in range(10):
        q = to_tensor(x[(y == c).nonzero()[0][:1]])
        pred, scores, ex = few_shot(shapes_embedder, q, supports)
        correct += pred == str(c)
        assert len(scores) == 10 and ex.maps_support.shape == (5, 28, 28)
    assert correct >= 7
    q = to_tensor(x[:1])
    ex = explain_prototype(shapes_embedder, q, supports["0"])
    proto = shapes_embedder.embed(supports["0"]).mean(0)
    assert torch.allclose(ex.prototype, proto, atol=1e-6)
    assert abs(ex.score - float(torch.nn.functional.cosine_similarity(shapes_embedder.embed(q), proto[None]))) < 1e-5


def test_cli_similarity_and_retrieve(shapes_gallery, tmp_path, capsys):
    d, q = shapes_gallery
    other = next(d.glob("c4_*.png"))
    rc = main(["similarity", str(q), str(other), "--model", "shapes_metric", "--out", str(tmp_path / "pair")])
    assert rc == 0
    m = json.loads((tmp_path / "pair" / "manifest.json").read_text())
    assert m["method"] == "sfam" and -1 <= m["similarity"] <= 1 and len(m["top_channels"]) == 10
    for side in ("a", "b"):
        arr = np.load(tmp_path / "pair" / m["files"][side]["map"])
        assert arr.shape == (28, 28) and arr.max() == pytest.approx(1.0)
        assert (tmp_path / "pair" / m["files"][side]["overlay"]).is_file()
    rc = main(["similarity", str(q), str(other), "--model", "shapes_metric", "--metric", "euclidean",
               "--method", "stylianou", "--out", str(tmp_path / "pair2")])
    assert rc == 0 and "distance" in json.loads((tmp_path / "pair2" / "manifest.json").read_text())
    rc = main(["retrieve", str(q), "--gallery", str(d), "--model", "shapes_metric", "-k", "4",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "ret")])
    assert rc == 0
    m = json.loads((tmp_path / "ret" / "manifest.json").read_text())
    assert len(m["hits"]) == 4 and m["skipped_count"] == 2 and m["gallery_images"] == 20
    html = (tmp_path / "ret" / "index.html").read_text()
    assert "broken.png" in html and html.count("data:image") >= 9
    assert Image.open(tmp_path / "ret" / "grid.png").size[1] > 4 * 100
    err = capsys.readouterr().err
    assert "broken.png" in err


def test_cli_errors(shapes_gallery, tmp_path, capsys):
    _, q = shapes_gallery
    (tmp_path / "empty").mkdir()
    assert main(["retrieve", str(q), "--gallery", str(tmp_path / "empty"), "--model", "shapes_metric", "--no-cache",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no readable image" in capsys.readouterr().err
    assert main(["similarity", str(q), str(tmp_path / "missing.png"), "--model", "shapes_metric"]) == 2
    assert "file not found" in capsys.readouterr().err
    # a model whose output is not [B, D] (a trusted pickled module), and a TorchScript one (no hooks)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    torch.save(net, tmp_path / "spatial.pt")
    rc = main(["similarity", str(q), str(q), "--model", str(tmp_path / "spatial.pt"), "--trust", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "must return [B, D]" in err and "Traceback" not in err
    torch.jit.save(torch.jit.script(net), str(tmp_path / "spatial.ts"))
    rc = main(["similarity", str(q), str(q), "--model", str(tmp_path / "spatial.ts"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "TorchScript" in capsys.readouterr().err
