"""The generic HTML page builder: escaping, embedded and linked figures, tables, page structure."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from featurelens.report.html import Raw, Section, data_uri, error_box, escape, figure, gallery, page, table


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def _decode(uri: str) -> Image.Image:
    head, b64 = uri.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_text_is_escaped_everywhere_and_raw_passes():
    evil = '<script>alert("x")</script>'
    html = page(evil, [(evil, escape(evil)), Section("t", Raw("<b>bold</b>"))], subtitle=evil, footer=evil)
    assert "<script>" not in html and html.count("&lt;script&gt;") >= 4
    assert "<b>bold</b>" in html
    cell = table([[evil, Raw("<i>ok</i>")]], headers=[evil, "h"])
    assert "<script>" not in cell and "<i>ok</i>" in cell
    box = error_box(evil, evil, evil)
    assert "<script>" not in box
    cap = figure(np.zeros((4, 4, 3), np.uint8), evil)
    assert "<script>" not in cap and 'alt="&lt;script&gt;' in cap


def test_figure_embeds_arrays_and_files_and_links_relative_paths(tmp_path):
    arr = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    tags = _parse(figure(arr, "an array")).tags
    img = next(a for t, a in tags if t == "img")
    decoded = _decode(img["src"])
    assert decoded.size == (50, 30)
    np.testing.assert_array_equal(np.asarray(decoded), arr)  # PNG is lossless

    gray = np.linspace(0, 1, 20 * 10).reshape(10, 20)  # floats in [0, 1]
    assert _decode(next(a for t, a in _parse(figure(gray)).tags if t == "img")["src"]).size == (20, 10)

    path = tmp_path / "sub" / "pic.png"
    path.parent.mkdir()
    Image.fromarray(arr).save(path)
    embedded = next(a for t, a in _parse(figure(path, "file")).tags if t == "img")["src"]
    assert base64.b64decode(embedded.split(",", 1)[1]) == path.read_bytes()
    linked = _parse(figure(path, "file", embed=False, base_dir=tmp_path, link=path.relative_to(tmp_path)))
    assert next(a for t, a in linked.tags if t == "img")["src"] == "sub/pic.png"
    assert next(a for t, a in linked.tags if t == "a")["href"] == "sub/pic.png"

    small = _decode(data_uri(Image.fromarray(arr), max_size=25, fmt="jpeg"))
    assert small.format == "JPEG" and max(small.size) == 25


def test_table_cells_and_mapping_rows():
    html = table([{"name": "a", "n": 3, "x": 0.123456}, {"name": "b", "x": 2.0}], headers=["name", "n", "x"])
    p = _parse(html)
    assert [t for t, _ in p.tags].count("tr") == 3
    assert "0.1235" in html and '<td class="num">3</td>' in html and "<td></td>" in html
    inferred = table([{"k": 1, "v": "y"}])
    assert "<th>k</th>" in inferred and "<th>v</th>" in inferred


def test_page_structure_and_unique_section_ids():
    html = page("Report", [("Same", "<p>1</p>"), ("Same", "<p>2</p>"), Section("Bad", "x", error=True)])
    p = _parse(html)
    ids = [a["id"] for t, a in p.tags if t == "section"]
    assert ids == ["same", "same-2", "bad"]
    assert [a["href"] for t, a in p.tags if t == "a"] == ["#same", "#same-2", "#bad"]
    assert html.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in html
    assert "http://" not in html and "https://" not in html  # nothing loads from the network
    assert 'class="block failed"' in html
    g = gallery([figure(np.zeros((2, 2)), "a"), figure(np.ones((2, 2)), "b")], cell=123)
    assert "--cell:123px" in g and g.count("<figure") == 2
