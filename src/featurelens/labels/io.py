"""Reading the game's label export (CSV or JSONL) into typed records.

The export contract (issue 6), columns in this order::

    campaign, player, image_id, layer, cluster_id, cluster_index, reveal_step, q_percent,
    guessed_class, true_class, correct, label, created_at

``correct`` is ``true``/``false``; ``reveal_step`` is the 0-based index into the reveal schedule
q = 2, 4.5, 8, 13, 20, 30 %; ``cluster_id`` is the bundle's stable id ``<image_id>/<layer>/<index>``;
one row per label text. Extra columns are kept; missing columns are an error that lists them all.
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

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("row", *EXPORT_COLUMNS)}


def _parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise LabelsError(f"{where}: 'correct' must be true/false, got {value!r}")


def _parse_int(value: Any, column: str, where: str) -> int:
    try:
        return int(str(value).strip())
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
    rows = [dict(r) for r in reader]
    return records_from_rows(rows, source=str(path))


def write_labels_csv(records: list[LabelRecord], path: str | Path) -> Path:
    """Write records in the export format (used by tests and the demo for simulated exports)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(EXPORT_COLUMNS))
        w.writeheader()
        for r in records:
            d = r.to_dict()
            d.pop("row")
            d["correct"] = "true" if r.correct else "false"
            w.writerow(d)
    return path
