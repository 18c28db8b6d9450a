"""Real-browser end-to-end test: Playwright drives Debian's headless Chromium against a live server."""

from __future__ import annotations

import re
import uuid

import pytest
from game_helpers import ARTIFACTS, truth_for_round

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_sign_up_play_two_reveals_guess_label_score_leaderboard(page, live_server, sqlite_url):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))  # an XSS alert would land here

    name = f"<b>eve</b>{uuid.uuid4().hex[:4]}"  # markup in the name must show as text
    page.goto(f"{live_server}/signup")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", "a long enough password")
    page.click("button[type=submit]")
    page.goto(f"{live_server}/play?campaign=test")
    expect(page).to_have_url(re.compile(r"/round/\d+$"))
    expect(page.get_by_test_id("player-name")).to_have_text(name)
    round_id = int(page.url.rsplit("/", 1)[1])

    img = page.locator("#reveal-img")
    expect(img).to_have_attribute("src", re.compile(r"/r0\.jpg$"))
    page.wait_for_function("document.getElementById('reveal-img').naturalWidth > 0")
    # two reveals through the JavaScript "Show more" (no page reload)
    for step in (1, 2):
        page.click("#show-more")
        expect(img).to_have_attribute("src", re.compile(rf"/r{step}\.jpg$"))
        expect(page.locator(".steps li.on")).to_have_count(step + 1)
    expect(page.locator("#worth")).to_have_text("60")  # what a correct guess is worth now
    expect(page.locator("#q")).to_have_text("8")
    page.wait_for_function("document.getElementById('reveal-img').naturalWidth > 0")
    page.screenshot(path=str(ARTIFACTS / "game-round.png"), full_page=True)

    page.select_option("#guess", truth_for_round(sqlite_url, round_id))
    labels = page.locator("input[name=labels]")
    labels.nth(0).fill("round shape")
    labels.nth(1).fill("<script>alert('x')</script>")
    page.click("#add-label")
    expect(labels).to_have_count(4)
    labels.nth(3).fill("dark background")
    page.click("#submit-guess")

    expect(page.locator("h1")).to_have_text("Correct!")
    expect(page.get_by_test_id("round-points")).to_have_text("60")  # correct after two reveals
    expect(page.locator(".chips li")).to_have_count(3)
    expect(page.locator(".chips")).to_contain_text("<script>alert('x')</script>")
    page.screenshot(path=str(ARTIFACTS / "game-result.png"), full_page=True)

    page.click("#to-leaderboard")
    row = page.locator("#leaderboard tbody tr").first
    expect(row).to_contain_text(name)
    expect(row).to_contain_text("60")
    page.screenshot(path=str(ARTIFACTS / "game-leaderboard.png"), full_page=True)
    assert errors == []
