"""Languages: gettext catalogues (English, Italian), the language of a request, the export's language column,
and one whole round in Italian in a real browser."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from game_helpers import ARTIFACTS, ApiPlayer, truth_for_round, truth_of

TEMPLATES = Path(__file__).resolve().parents[2] / "src" / "featurelens" / "game" / "templates"
_CALL = re.compile(r"""(?:_|ngettext)\((["'])((?:(?!\1).)*)\1(?:,\s*(["'])((?:(?!\3).)*)\3)?""")
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


def _template_msgids() -> set[str]:
    ids: set[str] = set()
    for f in TEMPLATES.glob("*.html"):
        for m in _CALL.finditer(f.read_text(encoding="utf-8")):
            ids.add(m.group(2))
            if m.group(4):
                ids.add(m.group(4))
    return ids


def test_italian_catalogue_covers_every_template_string():
    from featurelens.game import i18n

    it = i18n.catalog("it").messages
    template = set(i18n.parse_po((i18n.LOCALE_DIR / "messages.pot").read_text(encoding="utf-8")) or {})
    ids = _template_msgids()
    assert len(ids) > 100
    missing = sorted(ids - set(it))
    assert missing == []
    for msgid, msgstr in it.items():  # same placeholders in the translation
        assert sorted(_PLACEHOLDER.findall(msgid)) == sorted(_PLACEHOLDER.findall(msgstr)), msgid
    assert template == set()  # the template has no translations...
    pot = (i18n.LOCALE_DIR / "messages.pot").read_text(encoding="utf-8")
    assert all(f'"{m}"' in pot.replace('\\"', '"') for m in ids)  # ...but every template string
    assert i18n.catalog("en").messages == {} and i18n.catalog("xx").lang == "en"


def test_parse_po_reference():
    from featurelens.game.i18n import parse_po

    text = '''# comment
msgid ""
msgstr ""
"Language: it\\n"

msgid "Hello"
msgstr "Ciao"

#, fuzzy
msgid "Fuzzy"
msgstr "Non sicuro"

msgid "long "
"text"
msgstr "testo "
"lungo \\"citato\\"\\n"

msgid "untranslated"
msgstr ""

msgid "%(n)s map"
msgid_plural "%(n)s maps"
msgstr[0] "%(n)s mappa"
msgstr[1] "%(n)s mappe"

#~ msgid "old"
#~ msgstr "vecchio"
'''
    assert parse_po(text) == {"Hello": "Ciao", "long text": 'testo lungo "citato"\n', "%(n)s map": "%(n)s mappa",
                              "%(n)s maps": "%(n)s mappe"}
    with pytest.raises(ValueError):
        parse_po('msgid "a\nmsgstr "b"')


def test_accept_language_negotiation():
    from featurelens.game.i18n import negotiate

    assert negotiate("it-IT,it;q=0.9,en;q=0.8") == "it"
    assert negotiate("en-GB,en;q=0.9,it;q=0.8") == "en"
    assert negotiate("de-DE,it;q=0.5,en;q=0.4") == "it"
    assert negotiate("fr, de") is None and negotiate(None) is None and negotiate("it;q=0") is None
    assert negotiate("it;q=abc, en") == "en"


def test_language_per_request_cookie_and_player(app):
    p = ApiPlayer(app)
    assert p.signup().status_code == 201
    rnd = p.start()
    assert "Show more" in p.c.get(f"/round/{rnd['id']}").text
    it = p.c.get(f"/round/{rnd['id']}", headers={"Accept-Language": "it-IT,it;q=0.9"}).text
    assert "Mostra di più" in it and '<html lang="it">' in it and "Show more" not in it
    # the language buttons: a cookie, and the player's saved choice
    r = p.c.post("/language", data={"lang": "it", "next": f"/round/{rnd['id']}", "csrf_token": p.csrf},
                 follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/round/{rnd['id']}"
    assert "Mostra di più" in p.c.get(f"/round/{rnd['id']}").text
    other_device = ApiPlayer(app, name=p.name, password=p.password)
    assert other_device.login().status_code == 200
    assert "Classifica" in other_device.c.get("/").text  # no cookie there: the saved choice
    other_device.c.cookies.set("fl_lang", "en")
    assert "Leaderboard" in other_device.c.get("/").text  # the cookie (this device's choice) wins
    assert p.c.post("/language", data={"lang": "xx", "csrf_token": p.csrf}).status_code == 422
    assert p.c.post("/language", data={"lang": "en", "next": "//evil.example", "csrf_token": p.csrf},
                    follow_redirects=False).headers["location"] == "/"
    assert p.c.post("/language", data={"lang": "it"}).status_code == 403  # CSRF


def test_export_records_each_labels_language(app, game_bundle):
    from featurelens.game import store

    en, it = ApiPlayer(app), ApiPlayer(app)
    for p in (en, it):
        assert p.signup().status_code == 201
    r1 = en.start()
    assert en.guess(r1["id"], truth_of(game_bundle, r1["image_id"]), ["fur"]).status_code == 201
    r2 = it.start()
    a = it.c.post(f"/api/rounds/{r2['id']}/give-up", json={"labels": ["pelo"]},
                  headers=it.h(**{"Idempotency-Key": uuid.uuid4().hex, "Accept-Language": "it"}))
    assert a.status_code == 201
    rows = {r["label"]: r["language"] for r in store.export_rows(app.state.db, "test")}
    assert rows == {"fur": "en", "pelo": "it"}


@pytest.mark.browser
@pytest.mark.slow
def test_one_whole_round_in_italian(page, live_server, sqlite_url):
    from playwright.sync_api import expect

    from featurelens.game import store
    from featurelens.game.db import Database, make_engine

    ARTIFACTS.mkdir(exist_ok=True)
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server}/signup")
    expect(page.locator("h1")).to_have_text("Create an account")
    page.get_by_test_id("lang-it").click()
    expect(page.locator("h1")).to_have_text("Crea un account")
    expect(page.locator("html")).to_have_attribute("lang", "it")
    name = f"giocatore{uuid.uuid4().hex[:4]}"
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", "una password lunga")
    page.click("button[type=submit]")
    page.goto(f"{live_server}/play?campaign=test")
    expect(page).to_have_url(re.compile(r"/round/\d+$"))
    round_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("h1")).to_have_text("Che cos'è questa foto?")
    expect(page.locator("#show-more")).to_have_text("Mostra di più")
    page.click("#show-more")
    expect(page.locator("#reveal-img")).to_have_attribute("src", re.compile(r"/r1\.jpg$"))
    expect(page.locator("#worth")).to_have_text("80")
    page.select_option("#guess", truth_for_round(sqlite_url, round_id))
    labels = page.locator("input[name=labels]")
    expect(labels.nth(0)).to_have_attribute("placeholder", "etichetta 1")
    labels.nth(0).fill("orecchie a punta")
    page.click("#add-label")
    expect(labels.nth(3)).to_have_attribute("placeholder", "etichetta 4")
    labels.nth(3).fill("pelo tigrato")
    expect(page.locator("#submit-guess")).to_have_text("Invia la risposta")
    page.screenshot(path=str(ARTIFACTS / "game-round-it.png"), full_page=True)
    page.click("#submit-guess")
    expect(page.locator("h1")).to_have_text("Giusto!")
    expect(page.get_by_test_id("round-points")).to_have_text("80")
    expect(page.locator("main")).to_contain_text("dopo 1 rivelazione.")
    expect(page.locator("#next-round")).to_have_text("Prossimo round")
    page.screenshot(path=str(ARTIFACTS / "game-result-it.png"), full_page=True)
    assert errors == []
    db = Database(make_engine(sqlite_url))
    try:
        rows = [r for r in store.export_rows(db, "test") if r["player"] == name]
    finally:
        db.dispose()
    assert [(r["label"], r["language"], r["correct"]) for r in rows] == [("orecchie a punta", "it", True),
                                                                         ("pelo tigrato", "it", True)]
