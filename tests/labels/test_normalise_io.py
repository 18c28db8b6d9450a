from __future__ import annotations

import json

import pytest

from featurelens.labels.io import EXPORT_COLUMNS, LabelsError, read_labels
from featurelens.labels.normalise import NormaliseParams, normalise_label


@pytest.mark.parametrize(
    ("raw", "cls", "expected"),
    [
        ("cat's ears", "cat", "ears"),
        ("cats ears", "cat", "ears"),
        ("Cats' EARS ", "cat", "ears"),
        ("cat’s whiskers", "cat", "whiskers"),  # curly apostrophe
        ("Tabby Cat whiskers", "tabby cat", "whiskers"),
        ("tabby cats' eyes", "tabby cat", "eyes"),
        ("the cat ears", "tabby cat", "ears"),  # head noun of a multiword class
        ("coffee mug's handle", "coffee mug", "handle"),
        ("mice tails", "mouse", "tails"),  # irregular plural (lemminflect)
        ("category", "cat", "category"),  # whole words only
        ("tabby stripes", "tabby cat", "tabby stripes"),  # the modifier alone is not the class
        ("Egyptian cat ear", "tabby, tabby cat", "egyptian ear"),  # comma alternatives
        ("  CAT  ", "cat", ""),
        ("!!!", "cat", ""),
    ],
)
def test_class_name_stripping(raw, cls, expected):
    assert normalise_label(raw, cls) == expected


def test_stripping_is_a_parameter():
    assert normalise_label("cat ears", "cat", NormaliseParams(strip_class_name=False)) == "cat ears"
    assert normalise_label("cat ears", "tabby cat", NormaliseParams(strip_head_noun=False)) == "cat ears"


def _write_csv(path, columns, rows):
    path.write_text(",".join(columns) + "\n" + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_missing_columns_are_listed(tmp_path):
    cols = [c for c in EXPORT_COLUMNS if c not in ("label", "reveal_step")]
    f = _write_csv(tmp_path / "x.csv", cols, [])
    with pytest.raises(LabelsError) as info:
        read_labels(f)
    assert "reveal_step" in str(info.value) and "label" in str(info.value)


def test_reads_csv_and_jsonl(tmp_path):
    row = ["c1", "p1", "img", "head", "img/head/0", "0", "2", "8", "cat", "cat", "true", "Cat's ears", "t"]
    recs = read_labels(_write_csv(tmp_path / "x.csv", EXPORT_COLUMNS, [row]))
    assert recs[0].label == "Cat's ears" and recs[0].correct is True and recs[0].reveal_step == 2
    jl = tmp_path / "x.jsonl"
    jl.write_text(json.dumps(dict(zip(EXPORT_COLUMNS, row))) + "\n", encoding="utf-8")
    assert read_labels(jl)[0] == recs[0]


def test_bad_values_name_the_row(tmp_path):
    row = ["c1", "p1", "img", "head", "img/head/0", "0", "x", "8", "cat", "cat", "true", "ears", "t"]
    with pytest.raises(LabelsError, match=r"row 1.*reveal_step"):
        read_labels(_write_csv(tmp_path / "x.csv", EXPORT_COLUMNS, [row]))
    with pytest.raises(LabelsError, match="does not exist"):
        read_labels(tmp_path / "nope.csv")


def test_csv_formula_guard_of_the_game_export_is_undone(tmp_path):
    """The game's CSV export puts ``'`` before cells starting with = + - @ (docs/game.md); the reader
    gives back what the player typed, and leaves other apostrophes alone."""
    import io

    from featurelens.game.store import EXPORT_COLUMNS as GAME_COLUMNS
    from featurelens.game.store import write_export

    base = dict.fromkeys(GAME_COLUMNS, 0) | {"seen_before": False, "verified": True, "language": "en"}
    base |= dict(zip(EXPORT_COLUMNS, ["c1", "p1", "img", "head", "img/head/0", 0, 2, 8, "cat", "cat", True, "", "t"]))
    typed = ["=HYPERLINK(\"http://x\",\"x\")", "-shaped edge", "@top", "'quoted' ear", "plain"]
    buf = io.StringIO()
    write_export([{**base, "label": t} for t in typed], buf, "csv")
    assert "'=HYPERLINK" in buf.getvalue()  # the guard is really in the file
    path = tmp_path / "x.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    assert [r.label for r in read_labels(path)] == typed
