"""Stop-word lists for choosing representative words.

- ``"nltk+positional"`` (default, as the authors): NLTK's English list (179 words, shipped as
  ``data/nltk_english_stopwords.txt``, no NLTK needed) plus :data:`POSITIONAL_EXTRAS`. Visual words people
  use for maps (*top, bottom, front, back, side, fire, thick, thin, full, empty*) are kept.
- ``"nltk"``: NLTK's list alone.
- ``"sklearn"`` (featurelens before issue 13): scikit-learn's English list (318 words) plus
  :data:`LEGACY_EXTRAS`; it removes *top, bottom, front, back, side, ...*.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

#: positional words the authors add to NLTK's list: they say where, not what
POSITIONAL_EXTRAS: frozenset[str] = frozenset(
    {"left", "right", "center", "centre", "middle", "upper", "lower"}
)
#: words featurelens added to scikit-learn's list before issue 13
LEGACY_EXTRAS: frozenset[str] = frozenset({"like", "looks", "look", "thing", "things", "part", "parts", "stuff"})

STOP_LISTS: tuple[str, ...] = ("nltk+positional", "nltk", "sklearn")


@lru_cache(maxsize=1)
def nltk_english() -> frozenset[str]:
    """NLTK's English stop words (179), read from the package data file."""
    text = resources.files("featurelens.labels").joinpath("data/nltk_english_stopwords.txt").read_text("utf-8")
    return frozenset(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))


def stop_word_list(name: str = "nltk+positional") -> frozenset[str]:
    """The stop words of a named list (one of :data:`STOP_LISTS`)."""
    if name == "nltk+positional":
        return nltk_english() | POSITIONAL_EXTRAS
    if name == "nltk":
        return nltk_english()
    if name == "sklearn":
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return frozenset(ENGLISH_STOP_WORDS) | LEGACY_EXTRAS
    raise ValueError(f"unknown stop-word list {name!r}: use one of {', '.join(STOP_LISTS)}")
