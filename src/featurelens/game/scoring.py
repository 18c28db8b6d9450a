"""Points of a round and the pluggable label-agreement matcher.

Guess points
    ``GUESS_POINTS[s]`` for a correct guess made after ``s`` reveals (0-based step: fewer reveals,
    more points): 100, 80, 60, 45, 30, 20. A wrong guess or giving up scores 0.

Label points
    A label *agrees* with another player's label on the same map when the matcher says so.
    When a label is stored, it earns ``AGREE_POINTS`` for every *other player* who already gave an
    agreeing label on that map (capped at ``AGREE_CAP`` players), and each of those earlier labels
    earns ``AGREE_POINTS`` once more (so early labellers are rewarded when others confirm them,
    as in the ESP game). Only *independent* agreement counts (the campaign's ``agreement_rule``, see
    ``store._independent``): from other client addresses (``address``, the default; the points count
    distinct addresses) or from players who passed gold checks (``gold``). A label with such agreement is
    ``verified`` in the export.

Matchers
    A matcher has ``normalize(text) -> str`` (stored alongside the label, used for fast equality)
    and ``agree(a, b) -> bool`` on raw texts. The default :class:`LemmaMatcher` compares bags of
    lemmas (lemminflect), so "Pointed ears" == "ear pointed" == "pointed ear". A semantic matcher
    (e.g. Sentence-BERT cosine similarity above a threshold) can be passed to ``create_app``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Protocol, runtime_checkable

GUESS_POINTS: tuple[int, ...] = (100, 80, 60, 45, 30, 20)
AGREE_POINTS = 10
AGREE_CAP = 5

_STOP = frozenset(
    "a an the of and or with in on at to some its it is are this that there very".split()
)
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)


def guess_points(correct: bool, reveal_step: int) -> int:
    """Points for a guess after ``reveal_step`` reveals (0-based)."""
    if not correct:
        return 0
    step = min(max(reveal_step, 0), len(GUESS_POINTS) - 1)
    return GUESS_POINTS[step]


@runtime_checkable
class LabelMatcher(Protocol):
    """Decides whether two label texts say the same thing."""

    def normalize(self, text: str) -> str: ...

    def agree(self, a: str, b: str) -> bool: ...


@functools.lru_cache(maxsize=65536)
def _lemma(word: str) -> str:
    from lemminflect import getAllLemmas

    # the shortest lemma over all parts of speech, so that "running" (NOUN running / VERB run)
    # and "run" meet, and "pointed" (ADJ pointed / VERB point) and "point" meet
    candidates = {lemma.lower() for forms in getAllLemmas(word).values() for lemma in forms}
    return min(candidates, key=lambda x: (len(x), x)) if candidates else word


class LemmaMatcher:
    """Normalised-lemma equality: NFKC, casefold, words, drop stop words, lemmatise (shortest lemma of
    any part of speech, lemminflect), de-duplicate and sort: a label is a bag of lemmas."""

    def normalize(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text).casefold()
        words = [w for w in _WORD.findall(text) if w not in _STOP]
        return " ".join(sorted({_lemma(w) for w in words}))

    def agree(self, a: str, b: str) -> bool:
        na, nb = self.normalize(a), self.normalize(b)
        return bool(na) and na == nb


class ExactMatcher:
    """Case- and space-insensitive exact text match (for tests and comparison)."""

    def normalize(self, text: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", text).casefold().split())

    def agree(self, a: str, b: str) -> bool:
        return self.normalize(a) == self.normalize(b) != ""
