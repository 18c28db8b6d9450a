"""The labels report in a real Chromium (Playwright on Debian's Chromium, see tests/conftest.py): the
full-merge view and the game-statistics line are present for every labelled cluster map, the raw labels
open from their fold, and a screenshot is saved under test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_report_views_in_chromium(tmp_path, label_bundle, processed, page):
    from featurelens.labels.report import write_report

    html = write_report(label_bundle, processed, tmp_path / "rep")
    page.goto(html.resolve().as_uri())
    labelled = sorted({s.cluster_id for s in processed.scores})
    image_layers = sorted({(s.image_id, s.layer) for s in processed.scores})
    assert len(labelled) > 20
    # one full-merge view per labelled image and layer, each with its overlay and up to 6 labels
    views = page.locator("div.full-merge")
    assert views.count() == len(image_layers)
    got = sorted((views.nth(i).get_attribute("data-image"), views.nth(i).get_attribute("data-layer"))
                 for i in range(views.count()))
    assert got == image_layers
    for i in range(views.count()):
        img = views.nth(i).locator("img")
        assert img.evaluate("el => el.complete && el.naturalWidth > 0")
        assert views.nth(i).inner_text().count("(") <= 6
    # one game-statistics line per labelled cluster map, with the numbers of the export
    stats = page.locator("div.game-stats")
    assert sorted(stats.nth(i).get_attribute("data-cluster") for i in range(stats.count())) == labelled
    for cid in labelled[:5]:
        st = processed.map_stats[cid]
        text = page.locator(f'div.game-stats[data-cluster="{cid}"]').inner_text()
        assert text.startswith(f"{st.rounds} rounds: {st.correct} correct, {st.wrong} wrong, {st.gave_up} gave up")
        assert f"mean revealed {st.mean_q:.1f} %" in text
    # the raw texts are folded away and open on a click
    fold = page.locator(f'details.raw-labels[data-cluster="{labelled[0]}"]')
    raw = [x.raw_label for x in processed.labels if x.cluster_id == labelled[0]]
    assert not fold.locator("ul").is_visible()
    fold.locator("summary").click()
    assert fold.locator("ul").is_visible() and fold.locator("li").count() == len(raw)
    assert raw[0] in fold.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    fold.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "labels-report.png"), full_page=False)
    page.locator("div.full-merge").first.screenshot(path=str(ARTIFACTS / "labels-full-merge.png"))
    assert (ARTIFACTS / "labels-report.png").stat().st_size > 10_000
