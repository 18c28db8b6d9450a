"""Grouping by guessed class, the typo fix under it, the stop-word lists, ``seen_before`` and the game
statistics of each cluster map, each against a hand-worked example (issue 13)."""

from __future__ import annotations

import dataclasses

import pytest

from featurelens.labels.group import GroupParams, representative_word
from featurelens.labels.io import EXPORT_COLUMNS, LabelRecord, read_labels, write_labels_csv
from featurelens.labels.pipeline import LabelParams, process_labels
from featurelens.labels.stats import map_stats
from featurelens.labels.stopwords import POSITIONAL_EXTRAS, nltk_english, stop_word_list


def _rec(cluster_id, label, guess, *, player="p", step=0, true_class="tabby cat", seen_before=False, correct=None):
    im_id, layer, idx = cluster_id.split("/")
    return LabelRecord(
        row=0, campaign="t", player=player, image_id=im_id, layer=layer, cluster_id=cluster_id,
        cluster_index=int(idx), reveal_step=step, q_percent=[2.0, 4.5, 8.0, 13.0, 20.0, 30.0][step],
        guessed_class=guess, true_class=true_class, correct=(guess == true_class) if correct is None else correct,
        label=label, created_at="", seen_before=seen_before,
    )


# -- grouping by guessed class -------------------------------------------------------------------------
HAND = [
    _rec("cat_a/head/0", "whiskers", "tabby cat", player="p1"),
    _rec("cat_a/head/0", "Whiskers", "tabby cat", player="p2"),
    _rec("cat_a/head/1", "mug handle", "coffee mug", player="p3"),  # wrong guess: its context is "coffee mug"
    _rec("cat_a/head/2", "ears", "", player="p4"),  # give-up: no guess, grouped under the true class
    _rec("mug_a/head/0", "handle", "coffee mug", player="p1", true_class="coffee mug"),
]


def test_grouping_by_guessed_versus_true_class(label_bundle, sbert):
    by_guess = process_labels(label_bundle, HAND, embedder=sbert)
    assert [x.group_class for x in by_guess.labels] == ["tabby cat", "tabby cat", "coffee mug", "tabby cat",
                                                        "coffee mug"]
    # the guessed class's name is stripped too: "mug handle" said "handle" about a map taken for a mug
    assert by_guess.labels[2].normalised == "handle"
    groups = {(g.class_name, g.representative): g.labels for g in by_guess.groups}
    assert groups == {("tabby cat", "whisker"): {"whiskers": 2}, ("tabby cat", "ear"): {"ears": 1},
                      ("coffee mug", "handle"): {"handle": 2}}
    # scores and explanations stay keyed by the image's class
    assert {(s.cluster_id, s.class_name) for s in by_guess.scores} >= {("cat_a/head/1", "tabby cat")}
    by_true = process_labels(label_bundle, HAND, embedder=sbert, params=LabelParams(group_by="true"))
    assert [x.group_class for x in by_true.labels] == ["tabby cat"] * 4 + ["coffee mug"]
    # the cat image's "handle" now sits among the cat labels; the mug's "handle" alone under coffee mug
    assert {g.class_name: g.labels for g in by_true.groups if "handle" in g.labels}["coffee mug"] == {"handle": 1}
    assert any("handle" in g.labels for g in by_true.groups if g.class_name == "tabby cat")
    with pytest.raises(Exception, match="group_by must be one of guessed, true"):
        LabelParams(group_by="predicted")


def test_typo_fix_under_the_new_grouping(label_bundle, sbert):
    """A wrong guesser's typo is fixed against the words given to the same image class (default), although
    their label is grouped under the guessed class, where no close frequent word exists."""
    recs = [_rec("cat_a/head/0", "whiskers", "tabby cat", player=f"p{i}") for i in range(4)]
    recs += [_rec("cat_a/head/0", "whiskrs", "coffee mug", player="p9"),
             _rec("cat_a/head/1", "ears", "tabby cat", player="p1"),
             _rec("cat_a/head/1", "eras", "tabby cat", player="p2"),  # same group: fixed under both scopes
             _rec("cat_a/head/1", "ears", "tabby cat", player="p3")]
    image = process_labels(label_bundle, recs, embedder=sbert)
    typo = image.labels[4]
    assert typo.group_class == "coffee mug" and typo.text == "whiskers" and typo.representative == "whisker"
    assert image.typo_fixes["tabby cat"] == {"whiskrs": "whiskers", "eras": "ears"}
    group = process_labels(label_bundle, recs, embedder=sbert, params=LabelParams(typo_scope="group"))
    assert group.labels[4].text == "whiskrs" and group.labels[6].text == "ears"
    assert group.typo_fixes == {"tabby cat": {"eras": "ears"}}


# -- stop words ----------------------------------------------------------------------------------------
def test_nltk_list_is_shipped_and_visual_words_survive(sbert):
    words = nltk_english()
    assert len(words) == 179 and {"the", "above", "below", "wouldn't", "ma"} <= words
    assert not {"top", "back", "side", "front", "bottom", "thick"} & stop_word_list()
    assert POSITIONAL_EXTRAS <= stop_word_list() and {"left", "right", "center", "upper", "lower"} <= POSITIONAL_EXTRAS
    for word, texts in {
        "top": ["top", "on top", "the top"],
        "back": ["back", "its back", "the back"],
        "side": ["side", "left side", "right side"],  # positional extras are dropped, "side" is kept
        "front": ["front", "in front", "the front"],
        "bottom": ["bottom", "at the bottom"],
        "thick": ["thick", "very thick"],
    }.items():
        assert representative_word(texts, [2] + [1] * (len(texts) - 1), sbert)[0] == word, word
    # the former list (scikit-learn's) removes them: "back" can never name a group
    old = GroupParams(stop_words=stop_word_list("sklearn"))
    assert representative_word(["back", "its back", "back fur"], [3, 1, 1], sbert, old)[0] != "back"
    assert representative_word(["back", "its back", "back fur"], [3, 1, 1], sbert)[0] == "back"


# -- seen_before and statistics ------------------------------------------------------------------------
def test_seen_before_is_never_guessed_right(label_bundle, sbert):
    right = [_rec("cat_a/head/0", "whiskers", "tabby cat", player="p1", step=1)]
    seen = [dataclasses.replace(right[0], seen_before=True)]
    a = process_labels(label_bundle, right, embedder=sbert).scores[0]
    b = process_labels(label_bundle, seen, embedder=sbert).scores[0]
    assert a.any_correct and a.score == pytest.approx(1 * (1 - 0.1 * 1))
    assert not b.any_correct and b.score == pytest.approx(1 * (1 - 0.1 * 1) / 4)  # ÷ wrong_divisor


def test_map_statistics_from_label_rows(label_bundle):
    """An old export (no map_* columns): one round per (player, map) with labels; seen_before guesses are
    unknown, give-ups have no guess."""
    recs = [
        _rec("cat_a/head/0", "whiskers", "tabby cat", player="p1", step=0),
        _rec("cat_a/head/0", "long whiskers", "tabby cat", player="p1", step=0),  # same round, second label
        _rec("cat_a/head/0", "fur", "coffee mug", player="p2", step=2),
        _rec("cat_a/head/0", "ears", "", player="p3", step=5),
        _rec("cat_a/head/0", "whiskers", "tabby cat", player="p4", step=1, seen_before=True),
        _rec("cat_a/head/1", "ears", "tabby cat", player="p1", step=3),
    ]
    st = map_stats(recs)
    s0 = st["cat_a/head/0"]
    assert (s0.rounds, s0.correct, s0.wrong, s0.gave_up, s0.unknown) == (4, 1, 1, 1, 1)
    assert s0.mean_q == pytest.approx((2.0 + 8.0 + 30.0 + 4.5) / 4) and s0.source == "label rows"
    assert "4 rounds: 1 correct, 1 wrong, 1 gave up, 1 unknown" in s0.line() and "label rows" in s0.line()
    assert st["cat_a/head/1"].rounds == 1 and st["cat_a/head/1"].correct == 1


def test_export_v2_columns_and_old_exports(tmp_path, label_bundle, export, sbert):
    """v2 rows carry the map statistics over all rounds (also those without labels); v1 files still load."""
    v2 = read_labels(write_labels_csv(export, tmp_path / "v2.csv"))
    v1 = read_labels(write_labels_csv(export, tmp_path / "v1.csv", version=1))
    header = (tmp_path / "v1.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == EXPORT_COLUMNS
    assert all(r.map_rounds is None and not r.seen_before and r.language == "" for r in v1)
    assert [dataclasses.replace(r, map_rounds=None, map_correct=None, map_wrong=None, map_gave_up=None,
                                map_unknown=None, map_mean_q=None) for r in v2] == v1
    st2, st1 = map_stats(v2), map_stats(v1)
    # simulated: 6 players per map; rounds without labels only appear in the v2 statistics
    assert {s.rounds for s in st2.values()} == {6} and all(s.source == "export" for s in st2.values())
    assert all(st1[c].rounds <= st2[c].rounds for c in st1)
    for c, s in st2.items():
        assert s.correct + s.wrong + s.gave_up + s.unknown == s.rounds
        rows = [r for r in v2 if r.cluster_id == c]
        assert s.correct >= len({r.player for r in rows if r.correct})
    # the optional 14b columns are read when present
    text = (tmp_path / "v1.csv").read_text().splitlines()
    lines = [text[0] + ",seen_before,language"] + [t + (",true,de" if i == 0 else ",false,en") for i, t in
                                                   enumerate(text[1:])]
    (tmp_path / "v14b.csv").write_text("\n".join(lines) + "\n")
    recs = read_labels(tmp_path / "v14b.csv")
    assert recs[0].seen_before and recs[0].language == "de" and not recs[1].seen_before
    assert not recs[0].known_correct
    out = process_labels(label_bundle, recs[:30], embedder=sbert)
    assert out.labels[0].seen_before


def test_processed_folders_of_version_1_load_with_the_former_options(tmp_path, processed):
    import json

    from featurelens.labels.pipeline import load_processed

    processed.save(tmp_path / "p")
    data = json.loads((tmp_path / "p" / "labels.json").read_text())
    assert data["version"] == 2 and data["map_stats"]
    data["version"] = 1
    for k in ("group_by", "merge", "merged_score", "global_from", "trend", "typo_scope", "strip_guessed_class"):
        data["params"].pop(k)
    data.pop("map_stats")
    for r in data["labels"]:
        for k in ("group_class", "seen_before", "q_percent"):
            r.pop(k)
    (tmp_path / "p" / "labels.json").write_text(json.dumps(data))
    old = load_processed(tmp_path / "p")
    assert (old.params.group_by, old.params.merge, old.params.merged_score, old.params.global_from,
            old.params.trend) == ("true", "best-label", "sum", "all-labels", "share-slope")
    assert old.map_stats == {} and old.scores == processed.scores
