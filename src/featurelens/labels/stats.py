"""The game statistics of each cluster map: rounds, correct, wrong, gave up, unknown, mean revealed %.

From an export v2 (``map_*`` columns, computed by the game over *all* finished rounds of the map) they are
read as given. From an older export they are computed from the label rows: a player plays a map at most
once, so one round = one (player, cluster map) pair with labels; rounds answered without labels are then
missing (``source = "label rows"``). A round *gave up* when it has no guess; a guessed round is *unknown*
when its ``seen_before`` is true (the player had seen the photo, so its correctness is unknown), else
*correct* or *wrong*. ``mean_q`` = mean over rounds of the revealed percentage q at answer time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from featurelens.labels.io import LabelRecord

EXPORT = "export"
LABEL_ROWS = "label rows"


@dataclass
class MapStats:
    """Game statistics of one cluster map."""

    cluster_id: str
    rounds: int
    correct: int
    wrong: int
    gave_up: int
    unknown: int
    mean_q: float | None  # mean revealed % at answer time (None: no round)
    source: str  # "export" (all rounds) or "label rows" (rounds with labels only)

    def line(self) -> str:
        """One line for the report, e.g. ``6 rounds: 4 correct, 1 wrong, 1 gave up; mean revealed 8.3 %``."""
        q = "–" if self.mean_q is None else f"{self.mean_q:.1f} %"
        unknown = f", {self.unknown} unknown (photo seen before)" if self.unknown else ""
        note = "" if self.source == EXPORT else " (from label rows: rounds without labels not counted)"
        return (
            f"{self.rounds} rounds: {self.correct} correct, {self.wrong} wrong, {self.gave_up} gave up"
            f"{unknown}; mean revealed {q}{note}"
        )


def _cluster_id(r: LabelRecord) -> str:
    return r.cluster_id or f"{r.image_id}/{r.layer}/{r.cluster_index}"


def map_stats(records: Sequence[LabelRecord]) -> dict[str, MapStats]:
    """cluster id -> :class:`MapStats` (from the export's ``map_*`` columns when present, else the rows)."""
    out: dict[str, MapStats] = {}
    rounds: dict[str, dict[str, LabelRecord]] = {}
    for r in records:
        cid = _cluster_id(r)
        if r.map_rounds is not None:
            if cid not in out:
                mq = r.map_mean_q
                out[cid] = MapStats(
                    cid,
                    r.map_rounds,
                    r.map_correct or 0,
                    r.map_wrong or 0,
                    r.map_gave_up or 0,
                    r.map_unknown or 0,
                    None if mq is None or not math.isfinite(mq) else float(mq),
                    EXPORT,
                )
            continue
        rounds.setdefault(cid, {}).setdefault(r.player, r)  # one round per (player, map)
    for cid, per_player in rounds.items():
        if cid in out:
            continue
        rs = list(per_player.values())
        gave_up = sum(1 for r in rs if not r.guessed_class)
        unknown = sum(1 for r in rs if r.guessed_class and r.seen_before)
        correct = sum(1 for r in rs if r.guessed_class and r.known_correct)
        qs = [r.q_percent for r in rs if math.isfinite(r.q_percent)]
        out[cid] = MapStats(
            cid,
            len(rs),
            correct,
            len(rs) - unknown - gave_up - correct,
            gave_up,
            unknown,
            sum(qs) / len(qs) if qs else None,
            LABEL_ROWS,
        )
    return out
