"""User names that cannot impersonate each other: NFKC, no invisible or blank-looking characters, one script,
and a confusable *skeleton* (Unicode UTS #39) that must be unique among players.

``skeleton(s)`` follows UTS #39 section 4: NFD, replace every character by its prototype from Unicode's
confusables table, NFD again; here on the casefolded NFKC name, then casefolded once more, so that
"Аlice" (Cyrillic А), "ＡＬＩＣＥ" (full-width) and "alice" share the skeleton "alice", and "b0b" meets "bob".
The table is the ``confusables.json`` of the ``confusable-homoglyphs`` package (generated from Unicode's
``confusables.txt``): a character listed with a single homoglyph that lists it back is a source, that
homoglyph its prototype.
"""

from __future__ import annotations

import functools
import json
import unicodedata

#: letters that render as nothing: Hangul fillers, Braille blank, Mongolian vowel separator, ...
BLANK_LOOKING = frozenset([0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x180E, 0x17B4, 0x17B5, 0x2060, 0xFEFF])
#: script mixes that are normal (UTS #39 "highly restrictive"): Latin with Han and the Japanese kana, etc.
_MIXES = (frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}), frozenset({"LATIN", "HAN", "BOPOMOFO"}),
          frozenset({"LATIN", "HAN", "HANGUL"}))


class NameError_(ValueError):
    """A user name that is refused; the message says why (safe to show)."""


@functools.lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    from importlib.resources import files

    data = json.loads((files("confusable_homoglyphs") / "confusables.json").read_text(encoding="utf-8"))
    strip = str.maketrans("", "", "\u200e\u200f")
    proto: dict[str, str] = {}
    for ch, homs in data.items():
        if len(homs) != 1:
            continue  # a prototype (many sources map to it)
        target = homs[0]["c"].translate(strip)
        back = [h["c"].translate(strip) for h in data.get(target, [])]
        if target == ch or not target:
            continue
        if len(back) == 1 and back[0] == ch and ch < target:
            continue  # a mutual pair: the smaller code point is the prototype
        proto[ch] = target
    return proto


def _script(ch: str) -> str:
    from confusable_homoglyphs import categories

    return categories.alias(ch)


def username_skeleton(name: str) -> str:
    """The confusable skeleton of a user name (see module docstring)."""
    proto = _prototypes()
    text = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", name).casefold())
    for _ in range(3):  # prototypes of prototypes (rare): map to a fixed point
        mapped = "".join(proto.get(ch, ch) for ch in text)
        mapped = unicodedata.normalize("NFD", mapped)
        if mapped == text:
            break
        text = mapped
    return unicodedata.normalize("NFD", text).casefold()[:200]


def normalize_username(name: str) -> str:
    """NFKC, whitespace collapsed; refuse (with :class:`NameError_`) control, invisible and blank-looking
    characters, names without a letter or digit, and letters from scripts that do not go together."""
    name = " ".join(unicodedata.normalize("NFKC", str(name)).split())
    if not 3 <= len(name) <= 32:
        raise NameError_("user names are 3 to 32 characters long")
    scripts: set[str] = set()
    visible = 0
    for ch in name:
        cat = unicodedata.category(ch)
        if cat[0] == "C":
            raise NameError_("user names cannot contain control or invisible characters")
        if ord(ch) in BLANK_LOOKING or 0x2800 <= ord(ch) <= 0x28FF:
            raise NameError_("user names cannot contain blank-looking characters")
        if cat[0] in "LN":
            visible += 1
            if cat[0] == "L":
                script = _script(ch)
                if script not in ("COMMON", "INHERITED"):
                    scripts.add(script)
    if visible == 0:
        raise NameError_("user names need at least one letter or digit")
    if len(scripts) > 1 and not any(scripts <= mix for mix in _MIXES):
        raise NameError_("user names cannot mix letters of different scripts (" + ", ".join(sorted(scripts))
                         + "): they could imitate another name")
    return name
