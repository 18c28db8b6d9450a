"""The static bundle viewer, opened from disk (file://, no server) in Debian's headless Chromium."""

from __future__ import annotations

import pytest

from featurelens.network.build import build_bundle
from featurelens.network.pipeline import NetworkParams
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


def test_viewer_shows_images_layers_and_clusters_from_disk(page, viewer_bundle):
    from playwright.sync_api import expect

    bundle, index = viewer_bundle
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(15_000)
    page.goto(index.as_uri())

    expect(page.locator("#meta")).to_contain_text("2 image(s) · 2 layer(s) · mode: stable · pruning: paper · cluster maps: raw")
    expect(page.locator("nav#images button")).to_have_count(2)
    for im in bundle.images:
        page.goto(f"{index.as_uri()}#img={im.id}")
        expect(page.locator("nav#images button.on")).to_have_attribute("data-id", im.id)
        expect(page.locator(".facts")).to_contain_text(im.predicted_class)
        # the photo and every overlay load from the bundle's relative paths
        page.wait_for_function("[...document.querySelectorAll('#view img')].every(i => i.complete && i.naturalWidth > 0)")
        expect(page.locator(".strip a")).to_have_count(len(LAYERS))
        for i, layer in enumerate(LAYERS):
            box = page.locator(f"#layer-{i}")
            expect(box.locator(".n")).to_have_text(layer)
            expect(box.locator(".hd .s")).to_contain_text("raw conv output" if i == 0 else "after ReLU6")
            # stability of the fast mode under float-sized noise is exactly 1
            expect(box.locator(".hd .s")).to_contain_text("stability ARI 1.00, maps 1.00")
            clusters = sorted((c for c in im.clusters if c.layer == layer), key=lambda c: -c.weight)
            figures = box.locator("figure img")
            expect(figures).to_have_count(len(clusters))
            # ordered by weight: the page's alt texts are the cluster ids in the bundle's weight order
            assert [figures.nth(j).get_attribute("alt") for j in range(len(clusters))] == [c.id for c in clusters]
    # the picker switches images through the URL hash
    page.goto(index.as_uri())
    page.locator("nav#images button").nth(1).click()
    expect(page.locator("nav#images button.on")).to_have_attribute("data-id", bundle.images[1].id)
    assert "true class" in page.locator(".facts").inner_text()
    assert errors == []
