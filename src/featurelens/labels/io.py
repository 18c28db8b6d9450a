"""Reading the game's label export (CSV or JSONL) into typed records.

The export contract (issue 6), columns in this order::

    campaign, player, image_id, layer, cluster_id, cluster_index, reveal_step, q_percent,
    guessed_class, true_class, correct, label, created_at

``correct`` is ``true``/``false``; ``reveal_step`` is the 0-based index into the reveal schedule
q = 2, 4.5, 8, 13, 20, 30 %; ``cluster_id`` is the bundle's stable id ``<image_id>/<layer>/<index>``;
one row per label text. Missing columns are an error that lists them all.

Optional columns (absent in older exports; read when present, defaults otherwise):

- export v2 (issue 13), the game statistics of the row's cluster map over all its finished rounds,
  repeated on every row of that map: ``map_rounds, map_correct, map_wrong, map_gave_up, map_unknown,
  map_mean_q`` (``map_unknown``: rounds whose correctness is unknown; ``map_mean_q``: mean revealed % at
  answer time). Without them the statistics are computed from the label rows (rounds without labels
  are then missing; the report says so).
- issue 14b: ``seen_before`` (``true``: the player had already seen that image's photo, so whether the
  guess was right is unknown; such rows never count as "guessed right") and ``language`` (label language).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurelens.errors import FeaturelensError

#: the columns of the game export, in order
EXPORT_COLUMNS: tuple[str, ...] = (
    "campaign",
    "player",
    "image_id",
    "layer",
    "cluster_id",
    "cluster_index",
    "reveal_step",
    "q_percent",
    "guessed_class",
    "true_class",
    "correct",
    "label",
    "created_at",
)

#: export v2 (issue 13): per-cluster-map game statistics, repeated on each row of the map
STATS_COLUMNS: tuple[str, ...] = (
    "map_rounds",
    "map_correct",
    "map_wrong",
    "map_gave_up",
    "map_unknown",
    "map_mean_q",
)
#: columns read when present (absent in older exports)
OPTIONAL_COLUMNS: tuple[str, ...] = ("seen_before", "language", *STATS_COLUMNS)
#: export contract versions: the columns each one adds up to
EXPORT_VERSIONS: dict[int, tuple[str, ...]] = {1: EXPORT_COLUMNS, 2: EXPORT_COLUMNS + STATS_COLUMNS}

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n", ""}


class LabelsError(FeaturelensError):
    """A labels file or a processed-labels folder is missing, malformed, or holds nothing usable."""


@dataclass
class LabelRecord:
    """One label row of the game export (raw text kept as given)."""

    row: int  # 1-based data row number in the source file
    campaign: str
    player: str
    image_id: str
    layer: str
    cluster_id: str
    cluster_index: int
    reveal_step: int
    q_percent: float
    guessed_class: str
    true_class: str
    correct: bool
    label: str
    created_at: str
    seen_before: bool = False  # correctness unknown (the player had seen the photo before)
    language: str = ""
    map_rounds: int | None = None  # export v2: the cluster map's game statistics (None: old export)
    map_correct: int | None = None
    map_wrong: int | None = None
    map_gave_up: int | None = None
    map_unknown: int | None = None
    map_mean_q: float | None = None

    @property
    def known_correct(self) -> bool:
        """Guessed right, and known to be (``seen_before`` rows never count as right)."""
        return self.correct and not self.seen_before

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("row", *EXPORT_COLUMNS, *OPTIONAL_COLUMNS)}


def _parse_bool(value: Any, where: str, column: str = "correct") -> bool:
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise LabelsError(f"{where}: {column!r} must be true/false, got {value!r}")


def _optional_int(value: Any, column: str, where: str) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    return _parse_int(value, column, where)


def _optional_float(value: Any, column: str, where: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    return _parse_float(value, column, where)


def _parse_int(value: Any, column: str, where: str) -> int:
    try:
        return int(value if isinstance(value, str) else str(value).strip())  # int() ignores surrounding blanks
    except ValueError:
        raise LabelsError(f"{where}: {column!r} must be an integer, got {value!r}") from None


def _parse_float(value: Any, column: str, where: str) -> float:
    text = str(value).strip()
    if text == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise LabelsError(f"{where}: {column!r} must be a number, got {value!r}") from None


def records_from_rows(rows: list[dict[str, Any]], source: str = "labels") -> list[LabelRecord]:
    """Turn export rows (dicts keyed by column) into :class:`LabelRecord` objects.

    Raises :class:`LabelsError` listing every missing column, or naming the first bad value.
    """
    if not rows:
        return []
    present = set().union(*(r.keys() for r in rows))
    missing = [c for c in EXPORT_COLUMNS if c not in present]
    if missing:
        raise LabelsError(
            f"{source}: missing column(s) {', '.join(missing)}; a game export has the columns "
            f"{', '.join(EXPORT_COLUMNS)}"
        )
    out = []
    for i, r in enumerate(rows, start=1):
        where = f"{source} row {i}"
        reveal = _parse_int(r.get("reveal_step", ""), "reveal_step", where)
        if reveal < 0:
            raise LabelsError(f"{where}: reveal_step must be >= 0, got {reveal}")
        out.append(
            LabelRecord(
                row=i,
                campaign=str(r.get("campaign") or ""),
                player=str(r.get("player") or ""),
                image_id=str(r.get("image_id") or ""),
                layer=str(r.get("layer") or ""),
                cluster_id=str(r.get("cluster_id") or ""),
                cluster_index=_parse_int(r.get("cluster_index", "") or -1, "cluster_index", where),
                reveal_step=reveal,
                q_percent=_parse_float(r.get("q_percent", ""), "q_percent", where),
                guessed_class=str(r.get("guessed_class") or ""),
                true_class=str(r.get("true_class") or ""),
                correct=_parse_bool(r.get("correct", ""), where),
                label="" if r.get("label") is None else str(r.get("label")),
                created_at=str(r.get("created_at") or ""),
                seen_before=_parse_bool(r.get("seen_before"), where, "seen_before"),
                language=str(r.get("language") or ""),
                **{c: _optional_int(r.get(c), c, where) for c in STATS_COLUMNS if c != "map_mean_q"},
                map_mean_q=_optional_float(r.get("map_mean_q"), "map_mean_q", where),
            )
        )
    return out


def read_labels(path: str | Path) -> list[LabelRecord]:
    """Read a game export (``.csv`` or ``.jsonl``/``.json`` lines) into records.

    A file with a header but no rows gives an empty list; a missing file, an unreadable file, or
    missing columns raise :class:`LabelsError`.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"labels file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc}") from None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LabelsError(f"{path} line {n}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise LabelsError(f"{path} line {n}: expected a JSON object per line")
            rows.append(obj)
        if not rows:
            raise LabelsError(f"{path}: no label rows")
        return records_from_rows(rows, source=str(path))
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in EXPORT_COLUMNS if c not in header]
    if missing:
        raise LabelsError(
            f"{path}: missing column(s) {', '.join(missing)}; a game export has the columns "
            f"{', '.join(EXPORT_COLUMNS)}"
        )
    rows = [{k: _unneutralise(v) for k, v in r.items()} for r in reader]
    return records_from_rows(rows, source=str(path))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _unneutralise(cell: str | None) -> str | None:
    """Undo the game's CSV formula guard: ``'=x`` → ``=x`` (a ``'`` is put before cells starting with
    ``= + - @``, tab or CR; docs/game.md). Other cells are returned as they are; JSONL is always verbatim."""
    if isinstance(cell, str) and cell.startswith("'") and cell[1:].startswith(_FORMULA_START):
        return cell[1:]
    return cell


def write_labels_csv(records: list[LabelRecord], path: str | Path, version: int = 2) -> Path:
    """Write records in the export format of ``version`` (1: the issue-6 columns only; 2: with the map
    statistics and the optional ``seen_before``/``language``). Used by tests and for simulated exports."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(EXPORT_COLUMNS) if version == 1 else [*EXPORT_COLUMNS, *OPTIONAL_COLUMNS]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in records:
            d = r.to_dict()
            d.pop("row")
            d["correct"] = "true" if r.correct else "false"
            d["seen_before"] = "true" if r.seen_before else "false"
            w.writerow({k: ("" if v is None else v) for k, v in d.items()})
    return path
