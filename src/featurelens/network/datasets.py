"""Dataset readers for network explanations over many images.

Three layouts are read (:func:`read_dataset`):

* a **folder tree**: ``ROOT/<class>/.../image.jpg``, the class is the name of the top-level sub-folder
  (the ImageFolder convention; images deeper inside a class folder belong to that class);
* a **CSV** ``path,label`` (header optional), paths relative to the CSV's folder (or absolute);
* **plain files or folders** (images directly inside), without labels.

Selection is deterministic (:func:`select`): items are sorted by id, then, for ``per_class=N`` (per
label) or ``limit=N`` (overall), a permutation drawn from ``numpy.random.default_rng(seed)`` is walked
and the first N *readable* items are taken (an unreadable one is replaced by the next in the
permutation). The result is sorted again, so the order never depends on the file system.

Nothing aborts on a bad file: missing, empty, non-image or unreadable files and bad CSV rows end up in
:attr:`Dataset.skipped` with a reason. True classes are matched to the model's class names by
:class:`ClassMatcher` (case-insensitive, ``_`` = space, runs of spaces collapsed, or a class-map CSV);
labels that match no class are reported in :attr:`ClassResolution.unknown`, never kept silently.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from featurelens.errors import FeaturelensError, ImageLoadError
from featurelens.imaging import IMAGE_SUFFIXES, MAX_PIXELS, load_image

Layout = Literal["auto", "tree", "csv", "files"]
Check = Literal["none", "header", "full"]


@dataclass(frozen=True)
class DatasetItem:
    """One image of a dataset. ``image_id`` is unique within the dataset and stable across runs
    (a relative POSIX path), so it can key shards and ``--resume``. ``label`` is the dataset's raw label."""

    image_id: str
    path: Path
    label: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A file or CSV row left out, with the reason (``where`` is a path, or ``file.csv:LINE``)."""

    where: str
    reason: str


@dataclass
class Dataset:
    """The images of a dataset, in a deterministic order, and what was skipped reading it."""

    items: list[DatasetItem]
    skipped: list[Skipped] = field(default_factory=list)
    layout: str = "files"
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[str]:
        """The distinct labels, sorted (empty for unlabelled datasets)."""
        return sorted({it.label for it in self.items if it.label is not None})

    def work_items(self) -> list[tuple[str, str]]:
        """``(image_id, path)`` pairs, the items :mod:`featurelens.network.executor` runs over."""
        return [(it.image_id, str(it.path)) for it in self.items]

    def counts(self) -> dict[str | None, int]:
        """Images per label."""
        return dict(sorted(Counter(it.label for it in self.items).items(), key=lambda kv: str(kv[0])))

    def summary(self) -> str:
        """One line for the terminal, e.g. ``12 images in 3 classes (folder tree); 2 skipped``."""
        n_cls = len(self.labels)
        cls = f" in {n_cls} classes" if n_cls else ""
        return f"{len(self.items)} images{cls} ({self.layout.replace('-', ' ')}); {len(self.skipped)} skipped"


# ---------------------------------------------------------------------------
# readability
# ---------------------------------------------------------------------------
def check_image(path: Path, check: Check = "header", max_pixels: int = MAX_PIXELS) -> str | None:
    """``None`` if ``path`` looks readable, else the reason.

    ``"header"`` opens the file and parses its header only (format and size: cheap, catches missing,
    empty, non-image and oversized files); ``"full"`` decodes it with :func:`featurelens.imaging.load_image`
    (also catches truncated data); ``"none"`` only checks that the file exists.
    """
    if check == "none":
        return None if path.is_file() else "file not found"
    if check == "full":
        try:
            load_image(path, max_pixels=max_pixels)
        except ImageLoadError as exc:
            return str(exc).removeprefix(f"{path}: ")
        return None
    if not path.is_file():
        return "file not found" if not path.exists() else "not a file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except UnidentifiedImageError:
        return "not an image file (or an unsupported format)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"cannot read image ({exc})"
    if w * h > max_pixels:
        return f"image is {w}x{h}, above the limit of {max_pixels / 1e6:.0f} MP"
    return None


# ---------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p) and not _hidden(p.relative_to(folder)))


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def read_folder_tree(root: str | Path) -> Dataset:
    """``ROOT/<class>/**/image``: one label per top-level sub-folder. Image files directly in ROOT and
    non-image files are listed as skipped (hidden files and folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise FeaturelensError(f"{root}: not a folder")
    items: list[DatasetItem] = []
    skipped: list[Skipped] = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file():
            why = "outside any class sub-folder" if _is_image(child) else "not an image file (by suffix)"
            skipped.append(Skipped(str(child), why))
            continue
        for p in sorted(child.rglob("*")):
            rel = p.relative_to(root)
            if _hidden(rel) or not p.is_file():
                continue
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(Skipped(str(p), "not an image file (by suffix)"))
                continue
            items.append(DatasetItem(rel.as_posix(), p, child.name))
    if not items:
        raise FeaturelensError(f"{root}: no images in class sub-folders (expected ROOT/<class>/<image>)")
    return Dataset(items, skipped, "folder-tree", root)


_HEADER_PATH = {"path", "file", "filename", "image", "image_path"}


def csv_rows(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, stripped cells)`` of a UTF-8 CSV (a BOM is allowed), without blank and ``#`` lines."""
    if not path.is_file():
        raise FeaturelensError(f"{path}: {what} not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FeaturelensError(f"{path}: not a readable CSV file ({exc})") from None
    for lineno, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if any(cells) and not cells[0].startswith("#"):
            yield lineno, cells


def read_csv_dataset(csv_path: str | Path) -> Dataset:
    """A CSV of ``path,label`` rows (header optional; ``#`` comments and blank lines ignored). Paths are
    relative to the CSV's folder. Bad rows (too few columns, empty path or label, a path listed twice,
    a missing file) are skipped with their line number."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    items: list[DatasetItem] = []
    skipped: list[Skipped] = []
    first_line: dict[str, int] = {}
    for lineno, cells in csv_rows(csv_path, "CSV file"):
        where = f"{csv_path}:{lineno}"
        if lineno == 1 and cells[0].lower() in _HEADER_PATH:
            continue
        if len(cells) < 2:
            skipped.append(Skipped(where, "expected 'path,label'"))
            continue
        rel, label = cells[0], cells[1]
        if not rel or not label:
            skipped.append(Skipped(where, "empty path" if not rel else "empty label"))
            continue
        p = Path(rel)
        full = p if p.is_absolute() else base / p
        image_id = full.as_posix() if p.is_absolute() else Path(rel).as_posix()
        if image_id in first_line:
            skipped.append(Skipped(where, f"{rel} is listed twice (first on line {first_line[image_id]})"))
            continue
        first_line[image_id] = lineno
        if not full.is_file():
            skipped.append(Skipped(where, f"{rel}: file not found"))
            continue
        items.append(DatasetItem(image_id, full, label))
    if not items:
        raise FeaturelensError(f"{csv_path}: no usable 'path,label' rows ({len(skipped)} skipped)")
    return Dataset(items, skipped, "csv", base)


def _unique_ids(paths: Sequence[Path]) -> list[str]:
    """For each path the shortest trailing run of path parts that no other path shares."""
    parts = [p.resolve().parts for p in paths]
    depth = {i: 1 for i in range(len(paths))}
    while True:
        names = defaultdict(list)
        for i, ps in enumerate(parts):
            names["/".join(ps[-depth[i]:])].append(i)
        clash = [idx for idxs in names.values() if len(idxs) > 1 for idx in idxs]
        if not clash:
            break
        grew = False
        for i in clash:
            if depth[i] < len(parts[i]):
                depth[i] += 1
                grew = True
        if not grew:  # the same file given twice: handled by the caller
            break
    return ["/".join(ps[-depth[i]:]) for i, ps in enumerate(parts)]


def read_files(sources: Iterable[str | Path]) -> Dataset:
    """Plain image files and folders (images directly inside each folder), without labels. Files that
    are missing or given twice, and non-image files inside the folders, are skipped."""
    paths: list[Path] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()
    for src in map(Path, sources):
        if src.is_dir():
            found = []
            for p in sorted(src.iterdir()):
                if p.name.startswith(".") or not p.is_file():
                    continue
                (found.append(p) if p.suffix.lower() in IMAGE_SUFFIXES
                 else skipped.append(Skipped(str(p), "not an image file (by suffix)")))
        elif src.exists():
            found = [src]
        else:
            skipped.append(Skipped(str(src), "file not found"))
            continue
        for p in found:
            key = p.resolve()
            if key in seen:
                skipped.append(Skipped(str(p), "given twice"))
                continue
            seen.add(key)
            paths.append(p)
    if not paths:
        raise FeaturelensError("no images given (pass image files or folders holding images)")
    ids = _unique_ids(paths)
    return Dataset([DatasetItem(i, p) for i, p in zip(ids, paths)], skipped, "files", None)


def detect_layout(sources: Sequence[str | Path]) -> Layout:
    """``"csv"`` for one ``.csv`` file; ``"tree"`` for one folder with no image files directly inside
    but with sub-folders; ``"files"`` otherwise."""
    if len(sources) == 1:
        p = Path(sources[0])
        if p.is_file() and p.suffix.lower() == ".csv":
            return "csv"
        if p.is_dir():
            children = [c for c in p.iterdir() if not c.name.startswith(".")]
            if not any(_is_image(c) for c in children) and any(c.is_dir() for c in children):
                return "tree"
    return "files"


def read_dataset(sources: str | Path | Sequence[str | Path], layout: Layout = "auto") -> Dataset:
    """Read a dataset in any of the three layouts (``layout="auto"``: see :func:`detect_layout`).
    Files are not opened here; :func:`select` checks readability."""
    srcs = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not srcs:
        raise FeaturelensError("no dataset given")
    kind = detect_layout(srcs) if layout == "auto" else layout
    if kind in ("tree", "csv") and len(srcs) != 1:
        raise FeaturelensError(f"a {kind} dataset is one {'folder' if kind == 'tree' else 'CSV file'}")
    if kind == "tree":
        return read_folder_tree(srcs[0])
    if kind == "csv":
        return read_csv_dataset(srcs[0])
    if kind == "files":
        return read_files(srcs)
    raise FeaturelensError(f"unknown dataset layout {layout!r}; use auto, tree, csv or files")


# ---------------------------------------------------------------------------
# deterministic selection
# ---------------------------------------------------------------------------
def _take(items: list[DatasetItem], n: int | None, rng: np.random.Generator, check: Check,
          skipped: list[Skipped]) -> list[DatasetItem]:
    """The first ``n`` readable items of a seeded permutation of ``items`` (all readable items if
    ``n is None``); unreadable ones are appended to ``skipped``."""
    order = range(len(items)) if n is None else rng.permutation(len(items))
    out: list[DatasetItem] = []
    for i in order:
        if n is not None and len(out) >= n:
            break
        it = items[int(i)]
        why = check_image(it.path, check)
        if why is None:
            out.append(it)
        else:
            skipped.append(Skipped(str(it.path), why))
    return out


def select(
    dataset: Dataset,
    *,
    per_class: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    check: Check = "header",
) -> Dataset:
    """A deterministic subset of ``dataset`` with readable files only.

    Items are sorted by id; ``per_class=N`` takes, for each label in sorted order, the first N readable
    items of a permutation drawn from ``default_rng(seed)``; ``limit=N`` then does the same over what is
    left. Without either, every readable item is kept. Unreadable files join :attr:`Dataset.skipped`.
    """
    for name, v in (("per_class", per_class), ("limit", limit)):
        if v is not None and v < 1:
            raise FeaturelensError(f"{name} must be at least 1, got {v}")
    if per_class is not None and not dataset.labels:
        raise FeaturelensError("per_class needs a labelled dataset (a folder tree or a 'path,label' CSV)")
    rng = np.random.default_rng(seed)
    items = sorted(dataset.items, key=lambda it: it.image_id)
    skipped = list(dataset.skipped)
    if per_class is not None:
        by_label: dict[str, list[DatasetItem]] = defaultdict(list)
        for it in items:
            if it.label is not None:
                by_label[it.label].append(it)
        items = [x for lab in sorted(by_label) for x in _take(by_label[lab], per_class, rng, check, skipped)]
        items.sort(key=lambda it: it.image_id)
        if limit is None:
            return replace(dataset, items=items, skipped=skipped)
        check = "none"  # already checked
    chosen = _take(items, limit, rng, check, skipped)
    chosen.sort(key=lambda it: it.image_id)
    return replace(dataset, items=chosen, skipped=skipped)


# ---------------------------------------------------------------------------
# true classes
# ---------------------------------------------------------------------------
def normalize_label(text: str) -> str:
    """Case-folded, ``_`` as space, runs of white space collapsed: ``"Tabby_Cat "`` → ``"tabby cat"``."""
    return re.sub(r"\s+", " ", text.replace("_", " ")).strip().casefold()


def read_class_map(path: str | Path) -> dict[str, str]:
    """A CSV ``label,class`` (header optional): dataset label → model class name or class index."""
    path = Path(path)
    out: dict[str, str] = {}
    for lineno, cells in csv_rows(path, "class-map file"):
        if lineno == 1 and cells[0].lower() in ("label", "dataset_label") and len(cells) >= 2 \
                and cells[1].lower() in ("class", "model_class", "index"):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise FeaturelensError(f"{path}:{lineno}: expected 'label,class'")
        if cells[0] in out and out[cells[0]] != cells[1]:
            raise FeaturelensError(f"{path}:{lineno}: label {cells[0]!r} is mapped twice")
        out[cells[0]] = cells[1]
    return out


@dataclass
class ClassResolution:
    """How each dataset label maps to a model class.

    ``index``: label → class index for every label that matched. ``unknown``: label → number of images
    for labels that matched no class (reported, their images get no true class). ``ambiguous``: label →
    the candidate indices, when the normalised name fits several model classes.
    """

    index: dict[str, int]
    unknown: dict[str, int]
    ambiguous: dict[str, list[int]]
    class_names: list[str]

    def true_class(self, label: str | None) -> tuple[str | None, int | None]:
        """``(model class name, index)`` for a dataset label, or ``(None, None)`` if it did not match."""
        if label is None or label not in self.index:
            return None, None
        i = self.index[label]
        return self.class_names[i], i

    def problems(self) -> list[str]:
        """Lines for the terminal and the bundle about labels that could not be matched."""
        out = [f"label {lab!r} ({n} image{'s' * (n != 1)}) matches no class of the model"
               for lab, n in sorted(self.unknown.items())]
        out += [f"label {lab!r} matches several classes ({', '.join(self.class_names[i] for i in idx)}); "
                "use a class map" for lab, idx in sorted(self.ambiguous.items())]
        return out


class ClassMatcher:
    """Match dataset labels to model class names: exact name, then :func:`normalize_label` equality
    (a name shared by several classes, like ImageNet's two ``missile``, is ambiguous), or a class map (label → class name or integer index) which takes precedence."""

    def __init__(self, class_names: Sequence[str], class_map: dict[str, str] | None = None) -> None:
        self.class_names = list(class_names)
        self._exact: dict[str, list[int]] = defaultdict(list)
        for i, name in enumerate(self.class_names):
            self._exact[name].append(i)
        self._norm: dict[str, list[int]] = defaultdict(list)
        for i, name in enumerate(self.class_names):
            self._norm[normalize_label(name)].append(i)
        self.class_map = dict(class_map or {})
        self._mapped: dict[str, int] = {}
        for label, target in self.class_map.items():
            idx = self._target_index(target)
            if idx is None:
                raise FeaturelensError(f"class map: {target!r} (for label {label!r}) is not a class of the model")
            self._mapped[label] = idx

    def _target_index(self, target: str) -> int | None:
        if target.isdigit():
            i = int(target)
            return i if 0 <= i < len(self.class_names) else None
        m = self._match_name(target)
        return m if isinstance(m, int) else None

    def _match_name(self, label: str) -> int | list[int] | None:
        for cands in (self._exact.get(label, []), self._norm.get(normalize_label(label), [])):
            if len(cands) == 1:
                return cands[0]
            if cands:
                return list(cands)
        return None

    def match(self, label: str) -> int | list[int] | None:
        """The class index, a list of candidates when ambiguous, or ``None``."""
        if label in self._mapped:
            return self._mapped[label]
        return self._match_name(label)

    def resolve(self, dataset: Dataset) -> ClassResolution:
        counts = Counter(it.label for it in dataset.items if it.label is not None)
        index: dict[str, int] = {}
        unknown: dict[str, int] = {}
        ambiguous: dict[str, list[int]] = {}
        for label, n in sorted(counts.items()):
            m = self.match(label)
            if isinstance(m, int):
                index[label] = m
            elif isinstance(m, list):
                ambiguous[label] = m
            else:
                unknown[label] = n
        return ClassResolution(index, unknown, ambiguous, self.class_names)


def resolve_classes(dataset: Dataset, class_names: Sequence[str],
                    class_map: str | Path | dict[str, str] | None = None) -> ClassResolution:
    """Match every label of ``dataset`` to ``class_names`` (see :class:`ClassMatcher`);
    ``class_map`` is a CSV path or a mapping."""
    if class_map is not None and not isinstance(class_map, dict):
        class_map = read_class_map(class_map)
    return ClassMatcher(class_names, class_map).resolve(dataset)
