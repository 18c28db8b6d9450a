"""Label normalisation: lowercase, trim, remove leaked class names, drop what is left empty.

The raw text is always kept alongside the normalised text. Class-name stripping removes the class
name (each of its comma-separated alternatives, e.g. ImageNet's ``"tabby, tabby cat"``) together with
its plural and possessive forms: for ``"cat"``, ``cat``, ``cats``, ``cat's``, ``cats'`` (and the
irregular plural from lemminflect, e.g. ``mice`` for ``mouse``). For a multiword name such as
``"tabby cat"`` the last word takes the inflection (``"tabby cats' eyes"`` → ``"eyes"``), and by default
the head noun alone (``"cat"``) is stripped too, so ``"cat ears"`` for class ``"tabby cat"`` → ``"ears"``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})
_KEEP = re.compile(r"[^a-z0-9' \-]+")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class NormaliseParams:
    """Every constant of label normalisation."""

    strip_class_name: bool = True
    strip_head_noun: bool = True  # for multiword class names, also strip the last word alone
    leading_words: tuple[str, ...] = ("the", "a", "an", "its", "his", "her", "their", "of")
    min_length: int = 1  # normalised labels shorter than this (in characters) are dropped as empty


def _plural_forms(word: str) -> set[str]:
    forms = {word, word + "s", word + "es"}
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    try:
        from lemminflect import getInflection

        forms.update(getInflection(word, tag="NNS"))
    except Exception:  # pragma: no cover - lemminflect is a declared dependency
        pass
    return {f.lower() for f in forms if f}


@lru_cache(maxsize=1024)
def class_name_pattern(class_name: str, strip_head_noun: bool = True) -> re.Pattern[str] | None:
    """A regex matching ``class_name`` (each alternative) with plural/possessive forms, as whole words."""
    alternatives: list[list[str]] = []
    for alt in clean_text(class_name.replace("_", " ")).split(","):
        words = [w for w in alt.replace("-", " ").split() if w]
        if words:
            alternatives.append(words)
            if strip_head_noun and len(words) > 1:
                alternatives.append(words[-1:])
    if not alternatives:
        return None
    parts = []
    # longest alternatives first so "tabby cat" wins over "cat"
    for words in sorted(alternatives, key=lambda w: -len(" ".join(w))):
        head = [re.escape(w) for w in words[:-1]]
        last = "|".join(sorted((re.escape(f) for f in _plural_forms(words[-1])), key=len, reverse=True))
        body = r"[\s\-]+".join([*head, f"(?:{last})"])
        parts.append(body + r"(?:'s|')?")
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(parts) + r")(?![a-z0-9])")


def clean_text(text: str) -> str:
    """Lowercase, unify apostrophes, drop other punctuation, collapse whitespace, trim."""
    text = unicodedata.normalize("NFKC", str(text)).translate(_APOSTROPHES).lower()
    text = _KEEP.sub(" ", text)
    return _SPACES.sub(" ", text).strip(" -'")


def normalise_label(raw: str, class_name: str | None = None, params: NormaliseParams | None = None) -> str:
    """The normalised form of ``raw`` (``""`` when nothing is left).

    >>> normalise_label("Cat's  EARS", "cat")
    'ears'
    >>> normalise_label("tabby cats' eyes", "tabby cat")
    'eyes'
    """
    return _normalise(str(raw), class_name or None, params or _DEFAULT)


_DEFAULT = NormaliseParams()


@lru_cache(maxsize=1 << 16)
def _normalise(raw: str, class_name: str | None, p: NormaliseParams) -> str:
    """:func:`normalise_label`, cached: 100,000 rows of a game repeat far fewer (label, class) pairs."""
    text = clean_text(raw)
    if p.strip_class_name and class_name:
        pattern = class_name_pattern(class_name, p.strip_head_noun)
        if pattern is not None:
            text = _SPACES.sub(" ", pattern.sub(" ", text)).strip(" -'")
    # drop leading filler words ("the ears" -> "ears") and stray possessive marks
    words = [w.strip("'") for w in text.split(" ")]
    words = [w for w in words if w and w != "s"]
    while words and words[0] in p.leading_words:
        words.pop(0)
    text = " ".join(words)
    return text if len(text) >= p.min_length else ""
