"""Languages of the game's pages: gettext message catalogues (``locale/<lang>/LC_MESSAGES/messages.po``),
read by a small pure-Python ``.po`` parser at start-up, so nothing is compiled at install.

The catalogues are ordinary GNU gettext / Babel ``.po`` files (``pybabel update``/``compile`` work on them
too). English is the source language (its catalogue is empty: the ``msgid`` is the text). A page's language
is, in this order: the ``fl_lang`` cookie (set by the language buttons), the logged-in player's saved
language, the best ``Accept-Language`` match, English.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

LANGUAGES: dict[str, str] = {"en": "English", "it": "Italiano"}
DEFAULT = "en"
LOCALE_DIR = Path(__file__).parent / "locale"


def parse_po(text: str) -> dict[str, str]:
    """``{msgid: msgstr}`` of a ``.po`` file: comments skipped, continued ``"..."`` lines joined, C escapes
    decoded; fuzzy, obsolete (``#~``) and untranslated (empty ``msgstr``) entries left out. Plural entries
    map ``msgid`` to ``msgstr[0]`` and ``msgid_plural`` to ``msgstr[1]`` (English and Italian: n != 1)."""
    entries: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key: str | None = None
    fuzzy = False

    def flush() -> None:
        nonlocal cur, key, fuzzy
        if cur and not fuzzy:
            entries.append(cur)
        cur, key, fuzzy = {}, None, False

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            flush()
            continue
        if line.startswith("#"):
            if line.startswith("#,") and "fuzzy" in line:
                if cur:
                    flush()
                fuzzy = True
            continue
        if line.startswith('"'):
            if key is None:
                raise ValueError(f"a continued string without a keyword: {raw!r}")
            cur[key] += _unquote(line)
            continue
        word, _, rest = line.partition(" ")
        if word == "msgid" and "msgid" in cur:
            was_fuzzy = fuzzy
            fuzzy = False
            flush()
            fuzzy = was_fuzzy
        key = word
        cur[key] = _unquote(rest.strip())
    flush()
    out: dict[str, str] = {}
    for e in entries:
        msgid = e.get("msgid", "")
        if not msgid:
            continue  # the header
        if "msgid_plural" in e:
            if e.get("msgstr[0]"):
                out[msgid] = e["msgstr[0]"]
            if e.get("msgstr[1]"):
                out[e["msgid_plural"]] = e["msgstr[1]"]
        elif e.get("msgstr"):
            out[msgid] = e["msgstr"]
    return out


def _unquote(token: str) -> str:
    if not (len(token) >= 2 and token[0] == token[-1] == '"'):
        raise ValueError(f"expected a quoted string, got {token!r}")
    return ast.literal_eval(token)  # a C-style string literal: \" \\ \n \t


class Catalog:
    """The messages of one language: ``gettext(msgid)`` and ``ngettext(singular, plural, n)``."""

    def __init__(self, lang: str, messages: dict[str, str]) -> None:
        self.lang = lang
        self.messages = messages

    def gettext(self, message: str) -> str:
        return self.messages.get(message, message) if message else message

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.gettext(singular if n == 1 else plural)


@functools.cache
def catalog(lang: str) -> Catalog:
    """The catalogue of ``lang`` (English or an unknown language: no translations)."""
    path = LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"
    if lang not in LANGUAGES or not path.exists():
        return Catalog(DEFAULT, {})
    return Catalog(lang, parse_po(path.read_text(encoding="utf-8")))


def negotiate(accept_language: str | None) -> str | None:
    """The best of :data:`LANGUAGES` for an ``Accept-Language`` header (q-values honoured), or ``None``."""
    best: tuple[float, int, str] | None = None
    for i, part in enumerate((accept_language or "")[:500].split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        lang = tag.strip().lower().split("-")[0]
        if lang in LANGUAGES and q > 0 and (best is None or (q, -i) > (best[0], best[1])):
            best = (q, -i, lang)
    return best[2] if best else None


def valid_language(lang: str | None) -> str | None:
    return lang if lang in LANGUAGES else None
