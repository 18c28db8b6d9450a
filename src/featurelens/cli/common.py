"""Helpers shared by the sub-commands: image lists, progress bars, output folders, models, targets.

Policy for bad images (documented in the CLI reference): commands check *every* image before any
work starts and, if some cannot be used, stop with one line that lists all of them (exit code 2),
so a long run never dies half-way on the 97th file. Commands that prefer to skip bad files call
:func:`load_images` with ``skip_bad=True``, which counts and reports the skipped files instead.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from featurelens import imaging
from featurelens.errors import FeaturelensError, ImageLoadError, ModelError, TargetError

T = TypeVar("T")

#: progress bars appear (on a terminal) when a command handles more images than this
FEW_IMAGES = 3


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, with a one-line error otherwise."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0, with a one-line error otherwise."""
    return _int_at_least(text, 0)


def echo(message: str) -> None:
    """A line of normal output (stdout); a closed pipe (``| head``) ends the command quietly."""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0) from None


def warn(message: str) -> None:
    print(f"featurelens: warning: {message}", file=sys.stderr, flush=True)


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "image"
) -> Iterator[T]:
    """Iterate ``items`` with a tqdm bar on stderr when there are more than :data:`FEW_IMAGES` of them."""
    if total is None and isinstance(items, Sequence):
        total = len(items)
    if total is None or total <= FEW_IMAGES or not _interactive():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(
        items, total=total, desc=desc or None, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True
    )


def progress_bar(total: int, *, desc: str = "", unit: str = "image") -> Any:
    """A manual tqdm bar (``.update(n)``, ``.close()``); a silent stand-in for few items."""
    if total <= FEW_IMAGES or not _interactive():
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc or None, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def _interactive() -> bool:
    """Progress bars only on a terminal: logs and pipes get clean lines."""
    return sys.stderr.isatty()


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------
@dataclass
class ImageList:
    """Image files to process and the files that were skipped (with the reason)."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def report_skips(self) -> None:
        if self.skipped:
            shown = ", ".join(p.name for p, _ in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warn(f"skipped {len(self.skipped)} file(s) that are not images: {shown}{more}")


def collect_images(inputs: Sequence[str | Path], *, allow_folders: bool = False) -> ImageList:
    """Turn command-line arguments into image paths.

    A folder is expanded to the image files directly inside it (by suffix; other files are counted in
    ``skipped``) when ``allow_folders``; otherwise it is an error like any unusable file (reported by
    :func:`check_images`).
    """
    out = ImageList()
    for raw in inputs:
        p = Path(raw)
        if allow_folders and p.is_dir():
            images, others = imaging.list_images(p)
            out.paths.extend(images)
            out.skipped.extend((o, "not an image suffix") for o in others)
        else:
            out.paths.append(p)
    return out


def _load(path: Path) -> Image.Image:
    # read the limit at call time so it can be lowered (tests, memory-constrained runs); featurelens
    # enforces its own pixel limit, so Pillow's bomb *warning* (not its error) is noise on stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return imaging.load_image(path, max_pixels=imaging.MAX_PIXELS)


def check_images(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """Open every image once (fully decoded) and return their ``(width, height)``.

    Raises one :class:`ImageLoadError` listing every bad file, before any real work starts.
    """
    if not paths:
        raise ImageLoadError("no image given")
    sizes: list[tuple[int, int]] = []
    problems: list[str] = []
    for path in paths:
        try:
            with _load(path) as im:
                sizes.append(im.size)
        except ImageLoadError as exc:
            problems.append(str(exc))
    if problems:
        head = (
            "cannot use 1 image"
            if len(problems) == 1
            else f"cannot use {len(problems)} of {len(paths)} images"
        )
        raise ImageLoadError(f"{head}: " + "; ".join(problems))
    return sizes


def load_images(paths: Sequence[Path], *, skip_bad: bool = False) -> tuple[list[Image.Image], ImageList]:
    """Load RGB images; with ``skip_bad`` unusable files are skipped and counted, else the first bad one raises."""
    images: list[Image.Image] = []
    kept = ImageList()
    for path in progress(paths, desc="loading images"):
        try:
            images.append(_load(path))
            kept.paths.append(path)
        except ImageLoadError as exc:
            if not skip_bad:
                raise
            kept.skipped.append((path, str(exc)))
    return images, kept


def unique_names(paths: Sequence[Path]) -> list[str]:
    """File stems made unique (``cat``, ``cat-2``, ...), safe as file-name prefixes."""
    names: list[str] = []
    used: set[str] = set()
    for p in paths:
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in p.stem) or "image"
        name, i = base, 2
        while name.lower() in used:
            name, i = f"{base}-{i}", i + 1
        used.add(name.lower())
        names.append(name)
    return names


def output_dir(path: str | Path) -> Path:
    """Create (with parents) and return the output folder; a file in the way is an error."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FeaturelensError(f"{p}: output path exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeaturelensError(f"{p}: cannot create the output folder ({exc.strerror or exc})") from None
    return p


# ---------------------------------------------------------------------------
# models, layers, targets
# ---------------------------------------------------------------------------
def load_spec(name: str, *, trust: bool = False) -> Any:
    """:func:`featurelens.models.load_model` for the CLI."""
    from featurelens.models import load_model

    return load_model(name, trust=trust)


def check_hookable(spec: Any) -> None:
    """Raise :class:`ModelError` for models whose layers cannot be hooked (TorchScript)."""
    import torch

    if isinstance(spec.model, torch.jit.ScriptModule):
        raise ModelError(
            f"{spec.name}: TorchScript modules do not support the forward hooks featurelens needs to read "
            "layers; save the model with torch.save(model) and load it with --trust"
        )


def layer_names_for(spec: Any, layers: Sequence[str] | None) -> list[str]:
    """The layers to explain: the given names (checked, close matches on error) or the model's default."""
    from featurelens.engine import resolve_layers

    check_hookable(spec)
    if layers:
        return [n for n, _ in resolve_layers(spec.model, list(layers))]
    return [spec.resolve_default_layer()]


def num_classes(spec: Any) -> int | None:
    return None if spec.class_names is None else len(spec.class_names)


def parse_target(spec: Any, text: str | None) -> int | None:
    """``--target``: ``None``/``top`` → predicted class (returns None); an index; or a class name.

    Names are matched case-insensitively (``_`` counts as a space); an unknown name lists close matches.
    """
    if text is None or text.strip().lower() in ("top", "top1", "predicted"):
        return None
    value = text.strip()
    try:
        index = int(value)
    except ValueError:
        index = None
    if index is not None:
        n = num_classes(spec)
        if index < 0 or (n is not None and index >= n):
            raise TargetError(
                f"class index {index} is out of range (the model has {n} classes: 0..{(n or 1) - 1})"
            )
        return index
    if spec.class_names is None:
        raise TargetError(
            f"the model {spec.name} has no class names; give --target as a class index or 'top'"
        )

    def norm(s: str) -> str:
        return " ".join(s.lower().replace("_", " ").split())

    wanted = norm(value)
    hits = [i for i, c in enumerate(spec.class_names) if norm(c) == wanted]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise TargetError(
            f"class name {value!r} is ambiguous (indices {', '.join(map(str, hits))}); give --target as an index"
        )
    names = [norm(c) for c in spec.class_names]
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.6)
    close += [c for c in names if wanted in c and c not in close][: max(0, 5 - len(close))]
    hint = f"; close matches: {', '.join(close)}" if close else "; give a class index, a class name or 'top'"
    raise TargetError(f"unknown class name {value!r}{hint}")
