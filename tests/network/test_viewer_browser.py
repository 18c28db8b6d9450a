"""The static bundle viewer, opened from disk (file://, no server) in Debian's headless Chromium: maps
rendered on canvases with the Python rule, class filter, pages, lazily loaded chunks."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from featurelens.network.build import build_bundle
from featurelens.network.pipeline import NetworkParams
from featurelens.network.render import colormap_lut, image_map, overlay_image
from featurelens.network.viewer import write_viewer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LAYERS = ["blocks.15.project.conv", "head.act"]


@pytest.fixture(scope="module")
def viewer_bundle(lite0, photo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("viewer") / "bundle"
    images = [photo_dir / "chelsea.png", photo_dir / "coffee.jpg"]
    params = NetworkParams(mode="fast", effect=False, stability_runs=1)  # fast: an alias of stable
    bundle = build_bundle(lite0, images, out, layers=LAYERS, params=params, labels={"chelsea": "cat"})
    return bundle, write_viewer(out)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """25 images (real photos, synthetic maps) in chunks of 5, pages of 10."""
    from featurelens.game.simulate import synthetic_bundle

    out = synthetic_bundle(tmp_path_factory.mktemp("many") / "b", images=25, layers=("blocks.12", "head"), clusters=2)
    return out, write_viewer(out, chunk_size=5, page_size=10)


def _chunk_records(index, n=0) -> list[dict]:
    text = (index.parent / "viewer" / f"chunk-{n:04d}.js").read_text()
    return json.loads(text[text.index(",") + 1:text.rindex(")")])


def _canvas_rgb(page, selector: str) -> np.ndarray:
    uri = page.evaluate("sel => document.querySelector(sel).toDataURL('image/png')", selector)  # lossless
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB"))


def test_viewer_shows_images_layers_and_clusters_from_disk(page, viewer_bundle):
    from playwright.sync_api import expect

    bundle, index = viewer_bundle
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(15_000)
    page.goto(index.as_uri())

    expect(page.locator("#meta")).to_contain_text("2 image(s) · 2 layer(s) · mode: stable · pruning: paper · cluster maps: raw")
    expect(page.locator("#images button")).to_have_count(2)
    for im in bundle.images:
        page.goto(f"{index.as_uri()}#img={im.id}")
        expect(page.locator("#view")).to_have_attribute("data-shown", im.id)
        expect(page.locator("#images button.on")).to_have_attribute("data-id", im.id)
        expect(page.locator(".facts")).to_contain_text(im.predicted_class)
        expect(page.locator(".strip a")).to_have_count(len(LAYERS))
        for i, layer in enumerate(LAYERS):
            box = page.locator(f"#layer-{i}")
            expect(box.locator(".n")).to_have_text(layer)
            expect(box.locator(".hd .s")).to_contain_text("raw conv output" if i == 0 else "after ReLU6")
            expect(box.locator(".hd .s")).to_contain_text("stability ARI 1.00, maps 1.00")
            clusters = sorted((c for c in im.clusters if c.layer == layer), key=lambda c: -c.weight)
            figures = box.locator("figure canvas")
            expect(figures).to_have_count(len(clusters))
            assert [figures.nth(j).get_attribute("data-id") for j in range(len(clusters))] == [c.id for c in clusters]
    page.goto(index.as_uri())
    page.locator("#images button").nth(1).click()
    expect(page.locator("#images button.on")).to_have_attribute("data-id", bundle.images[1].id)
    expect(page.locator("#view")).to_have_attribute("data-shown", bundle.images[1].id)
    assert "true class" in page.locator(".facts").inner_text()
    # the same bundle as version 3 (shards: display JPEGs, float16 maps) opens alike
    from featurelens.network.bundle import upgrade_bundle

    v3 = upgrade_bundle(index.parent, index.parent.parent / "v3")
    page.goto(write_viewer(v3.root).as_uri())
    expect(page.locator("#view")).to_have_attribute("data-shown", v3.images[0].id)
    expect(page.locator("#layer-1 figure canvas")).to_have_count(sum(c.layer == LAYERS[1] for c in v3.images[0].clusters))
    assert errors == []


def test_canvas_overlays_equal_the_python_rendering(page, viewer_bundle):
    """Every cluster canvas of the first image against render.overlay_image of the same data (the chunk's
    photo decoded by PIL, the chunk's uint8 map), and the browser's colour table against matplotlib's."""
    from playwright.sync_api import expect

    bundle, index = viewer_bundle
    page.goto(index.as_uri())
    rec = _chunk_records(index)[0]
    expect(page.locator("#view")).to_have_attribute("data-shown", rec["id"])
    with Image.open(io.BytesIO(base64.b64decode(rec["photo"].split(",", 1)[1]))) as im:
        photo = np.asarray(im.convert("RGB"))
    main = _canvas_rgb(page, "canvas.main")
    assert np.abs(main.astype(int) - photo.astype(int)).max() <= 2  # the same JPEG, decoded by Chromium
    for c in rec["clusters"]:
        q = np.frombuffer(base64.b64decode(c["map"]), dtype=np.uint8).reshape(c["h"], c["w"])
        # the stored map is the bundle's map to 1/255
        fmap = bundle.load_map(bundle.cluster(c["id"]))
        assert np.abs(q / 255.0 - (fmap - fmap.min()) / (fmap.max() - fmap.min())).max() <= 0.5 / 255 + 1e-6
        want = overlay_image(main, image_map(q / 255.0, main.shape[:2]))
        got = _canvas_rgb(page, f'figure canvas[data-id="{c["id"]}"]')
        diff = np.abs(got.astype(int) - want.astype(int))
        assert (diff == 0).mean() > 0.99 and diff.max() <= 3, c["id"]
    # the colour of a value: LUT[lutIndex(v)] in the browser = matplotlib's jet in Python
    v = np.linspace(0, 1, 1001)
    js = np.asarray(page.evaluate("vs => vs.map(v => FLViewer.LUT[FLViewer.lutIndex(v)])", v.tolist()))
    from featurelens.imaging import colorize

    assert np.array_equal(js, colorize(v[None])[0])
    assert np.array_equal(np.asarray(page.evaluate("FLViewer.LUT")), colormap_lut())


def test_class_filter_pages_and_lazy_chunks(page, many):
    from playwright.sync_api import expect

    bundle_dir, index = many
    from featurelens.network.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(15_000)
    page.goto(index.as_uri())
    first = bundle.images[0]
    expect(page.locator("#view")).to_have_attribute("data-shown", first.id)
    expect(page.locator("#images button")).to_have_count(10)
    expect(page.locator("#page-info")).to_have_text("page 1 / 3 · 25 image(s)")
    # page 1 holds images 0-9 = chunks 0 and 1; none of the other three is loaded
    page.wait_for_function("[...document.querySelectorAll('#images img')].every(i => i.complete && i.naturalWidth > 0)")
    assert sorted(page.evaluate("FLViewer.loadedChunks()")) == [0, 1]
    page.locator("#next").click()
    page.locator("#next").click()
    expect(page.locator("#page-info")).to_have_text("page 3 / 3 · 25 image(s)")
    expect(page.locator("#images button")).to_have_count(5)
    expect(page.locator("#view")).to_have_attribute("data-shown", bundle.images[20].id)
    # opened at page 3: only its chunk (images 20-24) is loaded
    page.goto("about:blank")
    page.goto(f"{index.as_uri()}#page=2")
    expect(page.locator("#view")).to_have_attribute("data-shown", bundle.images[20].id)
    page.wait_for_function("[...document.querySelectorAll('#images img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.evaluate("FLViewer.loadedChunks()") == [4]
    # filter by class (true class, else the predicted one)
    cls = "tabby cat"
    want = [im.id for im in bundle.images if (im.true_class or im.predicted_class) == cls]
    page.select_option("#class-filter", cls)
    expect(page.locator("#images button")).to_have_count(len(want))
    assert [b.get_attribute("data-id") for b in page.locator("#images button").all()] == want
    expect(page.locator("#view")).to_have_attribute("data-shown", want[0])
    page.locator("#images button").nth(1).click()
    expect(page.locator("#view")).to_have_attribute("data-shown", want[1])
    expect(page.locator("#class-filter")).to_have_value(cls)
    # a missing chunk file is a visible error, not a blank page
    (index.parent / "viewer" / "chunk-0003.js").rename(index.parent / "viewer" / "gone.js")
    try:
        page.goto("about:blank")
        page.goto(f"{index.as_uri()}#img={bundle.images[16].id}")
        expect(page.locator("#view .err")).to_contain_text("chunk-0003.js")
    finally:
        (index.parent / "viewer" / "gone.js").rename(index.parent / "viewer" / "chunk-0003.js")
    assert errors == []
