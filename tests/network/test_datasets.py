"""Dataset readers: folder tree, CSV, plain files; deterministic selection; class matching."""

from __future__ import annotations

import numpy as np
import pytest

from featurelens.errors import FeaturelensError
from featurelens.models import imagenet_class_names
from featurelens.network.datasets import (
    ClassMatcher,
    check_image,
    detect_layout,
    normalize_label,
    read_class_map,
    read_csv_dataset,
    read_dataset,
    read_files,
    read_folder_tree,
    resolve_classes,
    select,
)


@pytest.fixture(scope="module")
def small_photos(photos):
    return {name: im.resize((48, 40)) for name, im in photos.items()}


@pytest.fixture()
def tree(tmp_path, small_photos):
    """ROOT/tabby_cat (3 real photos + a nested one + a text file), ROOT/Coffee_Mug (2), an image at the top."""
    root = tmp_path / "ds"
    (root / "tabby_cat" / "more").mkdir(parents=True)
    (root / "Coffee_Mug").mkdir()
    ims = list(small_photos.values())
    for i in range(3):
        ims[i].save(root / "tabby_cat" / f"c{i}.jpg")
    ims[3].save(root / "tabby_cat" / "more" / "deep.png")
    (root / "tabby_cat" / "notes.txt").write_text("not an image")
    ims[0].save(root / "Coffee_Mug" / "m0.png")
    ims[1].save(root / "Coffee_Mug" / "m1.jpg")
    ims[2].save(root / "loose.jpg")
    (root / ".hidden").mkdir()
    ims[2].save(root / ".hidden" / "h.jpg")
    return root


def test_folder_tree_labels_ids_and_skips(tree):
    assert detect_layout([tree]) == "files"  # loose.jpg at the top: not a tree by auto-detection
    ds = read_folder_tree(tree)
    assert ds.layout == "folder-tree"
    got = {it.image_id: it.label for it in ds.items}
    assert got == {
        "Coffee_Mug/m0.png": "Coffee_Mug", "Coffee_Mug/m1.jpg": "Coffee_Mug",
        "tabby_cat/c0.jpg": "tabby_cat", "tabby_cat/c1.jpg": "tabby_cat", "tabby_cat/c2.jpg": "tabby_cat",
        "tabby_cat/more/deep.png": "tabby_cat",
    }
    reasons = {s.where.rsplit("/", 1)[-1]: s.reason for s in ds.skipped}
    assert reasons == {"loose.jpg": "outside any class sub-folder", "notes.txt": "not an image file (by suffix)"}
    assert ds.counts() == {"Coffee_Mug": 2, "tabby_cat": 4}
    assert ds.summary() == "6 images in 2 classes (folder tree); 2 skipped"
    (tree / "loose.jpg").unlink()
    assert detect_layout([tree]) == "tree"
    assert read_dataset(tree).layout == "folder-tree"


def test_csv_paths_relative_to_csv_and_bad_rows(tmp_path, small_photos):
    d = tmp_path / "data"
    (d / "imgs").mkdir(parents=True)
    ims = list(small_photos.values())
    ims[0].save(d / "imgs" / "a.jpg")
    ims[1].save(d / "imgs" / "b.png")
    ims[2].save(tmp_path / "outside.jpg")
    csv_path = d / "labels.csv"
    csv_path.write_text(
        "path,label\n"
        "imgs/a.jpg,tabby cat\n"
        "# a comment\n"
        "\n"
        "imgs/b.png,Coffee_Mug\n"
        "imgs/a.jpg,tabby cat\n"          # 6: listed twice
        "imgs/missing.jpg,tabby cat\n"    # 7: file not found
        "imgs/b.png\n"                     # 8: no label column
        "imgs/b.png,\n"                    # 9: empty label
        f"{tmp_path / 'outside.jpg'},zebra\n",
        encoding="utf-8",
    )
    ds = read_dataset(csv_path)
    assert ds.layout == "csv"
    assert [(it.image_id, it.label) for it in ds.items] == [
        ("imgs/a.jpg", "tabby cat"), ("imgs/b.png", "Coffee_Mug"), ((tmp_path / "outside.jpg").as_posix(), "zebra"),
    ]
    assert ds.items[0].path == d / "imgs" / "a.jpg"
    assert ds.work_items()[0] == ("imgs/a.jpg", str(d / "imgs" / "a.jpg"))
    assert [(s.where.rsplit(":", 1)[-1], s.reason) for s in ds.skipped] == [
        ("6", "imgs/a.jpg is listed twice (first on line 2)"),
        ("7", "imgs/missing.jpg: file not found"),
        ("8", "expected 'path,label'"),
        ("9", "empty label"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("nothing.jpg,cat\n", encoding="utf-8")
    with pytest.raises(FeaturelensError, match="no usable"):
        read_csv_dataset(bad)
    with pytest.raises(FeaturelensError, match="not found"):
        read_csv_dataset(tmp_path / "nope.csv")


def test_plain_files_unique_ids(tmp_path, small_photos):
    ims = list(small_photos.values())
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        ims[0].save(tmp_path / sub / "same.jpg")
    ims[1].save(tmp_path / "x" / "other.png")
    (tmp_path / "x" / "readme.md").write_text("hi")
    ds = read_files([tmp_path / "x", tmp_path / "y" / "same.jpg", tmp_path / "x" / "other.png",
                     tmp_path / "gone.jpg"])
    assert [it.image_id for it in ds.items] == ["other.png", "x/same.jpg", "y/same.jpg"]  # shortest unique tail
    assert all(it.label is None for it in ds.items)
    assert sorted(s.reason for s in ds.skipped) == ["file not found", "given twice", "not an image file (by suffix)"]
    with pytest.raises(FeaturelensError, match="per_class needs a labelled dataset"):
        select(ds, per_class=1)
    with pytest.raises(FeaturelensError, match="no images given"):
        read_files([tmp_path / "gone.jpg"])


def test_check_image_reasons(tmp_path, small_photos):
    good = tmp_path / "good.jpg"
    small_photos["coffee"].save(good, quality=90)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("definitely not a PNG")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert check_image(good) is None and check_image(good, "full") is None
    assert "not an image" in check_image(empty)
    assert "not an image" in check_image(text)
    assert check_image(tmp_path / "none.jpg") == "file not found"
    assert check_image(truncated, "header") is None  # the header alone is intact ...
    assert "cannot read" in check_image(truncated, "full")  # ... the data is not
    assert "above the limit" in check_image(good, max_pixels=100)


def _reference_select(items, per_class, seed, bad):
    """Slow reference: per sorted label, walk default_rng(seed).permutation and take readable ones."""
    rng = np.random.default_rng(seed)
    labels = sorted({lab for _, lab in items})
    out = []
    for lab in labels:
        group = sorted(i for i, la in items if la == lab)
        perm = rng.permutation(len(group))
        taken = []
        for k in perm:
            if len(taken) == per_class:
                break
            if group[k] not in bad:
                taken.append(group[k])
        out.extend(taken)
    return sorted(out)


def test_select_per_class_is_seeded_refills_unreadable_and_matches_reference(tmp_path, small_photos):
    root = tmp_path / "ds"
    ims = list(small_photos.values())
    bad = set()
    for c, n in (("a", 7), ("b", 5), ("c", 2)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            p = root / c / f"{i:02d}.png"
            if c == "a" and i in (1, 4):
                p.write_bytes(b"\x89PNG broken")
                bad.add(f"{c}/{i:02d}.png")
            else:
                ims[i % 4].save(p)
    ds = read_dataset(root)
    pairs = [(it.image_id, it.label) for it in ds.items]
    for seed in (0, 1, 2):
        sel = select(ds, per_class=3, seed=seed)
        ids = [it.image_id for it in sel.items]
        assert ids == _reference_select(pairs, 3, seed, bad)
        assert ids == sorted(ids)
        assert sel.counts() == {"a": 3, "b": 3, "c": 2}
        assert not set(ids) & bad
        assert select(ds, per_class=3, seed=seed).items == sel.items  # deterministic
    # reordering the input does not change the selection (items are sorted first)
    shuffled = type(ds)(list(reversed(ds.items)), [], ds.layout, ds.root)
    assert select(shuffled, per_class=3, seed=5).items == select(ds, per_class=3, seed=5).items
    assert len({tuple(it.image_id for it in select(ds, per_class=3, seed=s).items) for s in range(6)}) > 1
    # every readable one without a limit; the unreadable ones listed with their reason
    full = select(ds)
    assert len(full) == 12 and sorted(s.where.rsplit("ds/", 1)[-1] for s in full.skipped) == sorted(bad)
    lim = select(ds, per_class=3, limit=4, seed=0)
    assert len(lim) == 4 and {it.image_id for it in lim.items} <= {it.image_id for it in select(ds, per_class=3).items}
    with pytest.raises(FeaturelensError, match="at least 1"):
        select(ds, limit=0)


def test_class_matching_normalised_unknown_and_ambiguous(tree):
    names = list(imagenet_class_names())
    assert normalize_label("  Tabby_Cat\t ") == "tabby cat"
    (tree / "loose.jpg").unlink()
    (tree / "not_a_class").mkdir()
    (tree / "Coffee_Mug" / "m0.png").rename(tree / "not_a_class" / "x.png")
    (tree / "missile").mkdir()
    (tree / "Coffee_Mug" / "m1.jpg").rename(tree / "missile" / "y.jpg")
    ds = read_dataset(tree)
    res = resolve_classes(ds, names)
    assert res.index == {"tabby_cat": names.index("tabby cat")}
    assert res.unknown == {"not_a_class": 1}
    assert sorted(res.ambiguous["missile"]) == [i for i, n in enumerate(names) if n == "missile"]
    assert len(res.ambiguous["missile"]) == 2
    assert res.true_class("tabby_cat") == ("tabby cat", 281)
    assert res.true_class("not_a_class") == (None, None)
    probs = res.problems()
    assert probs[0] == "label 'not_a_class' (1 image) matches no class of the model"
    assert "matches several classes" in probs[1] and "use a class map" in probs[1]
    # through a class map: by index and by (normalised) name; the map wins over name matching
    cmap = tree.parent / "map.csv"
    cmap.write_text("label,class\nmissile,744\nnot_a_class,Coffee_Mug\ntabby_cat,Egyptian Mau\n")
    res2 = resolve_classes(ds, names, cmap)
    assert res2.index == {"missile": 744, "not_a_class": names.index("coffee mug"),
                          "tabby_cat": names.index("Egyptian Mau")}
    assert res2.unknown == {} and res2.ambiguous == {}
    cmap.write_text("tabby_cat,no such class\n")
    with pytest.raises(FeaturelensError, match="not a class of the model"):
        resolve_classes(ds, names, cmap)
    cmap.write_text("tabby_cat\n")
    with pytest.raises(FeaturelensError, match="expected 'label,class'"):
        read_class_map(cmap)
    assert ClassMatcher(["Cat", "dog"]).match("CAT") == 0
