"""Images → network explanation → explanation bundle on disk (see :mod:`featurelens.network.bundle`)."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from featurelens.errors import FeaturelensError
from featurelens.imaging import as_pil
from featurelens.network.bundle import Bundle, BundleWriter, safe_name
from featurelens.network.layers import Unit, resolve_units
from featurelens.network.pipeline import NetworkParams, add_timing, explain_network
from featurelens.targets import ClassTarget, Predicted, TargetLike, as_target

ImageLike = str | Path | Image.Image


def describe_target(target: Callable[..., Any]) -> dict[str, str]:
    """``{"kind", "description"}`` of a target for ``bundle.json``."""
    if isinstance(target, Predicted):
        return {"kind": "predicted-class", "description": f"{target.kind} of the top-1 class"}
    if isinstance(target, ClassTarget):
        return {"kind": "class", "description": f"{target.kind} of class {target.classes}"}
    text = getattr(target, "description", None) or repr(target)
    return {"kind": getattr(target, "kind_name", "custom"), "description": str(text)[:300]}


def read_labels(path: str | Path) -> dict[str, str]:
    """True classes from a CSV with columns ``file,label`` (header optional): file name or stem → label."""
    path = Path(path)
    if not path.is_file():
        raise FeaturelensError(f"{path}: labels file not found")
    out: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise FeaturelensError(f"{path}:{i + 1}: expected 'file,label'")
            if i == 0 and row[0].strip().lower() in ("file", "image", "filename"):
                continue
            out[row[0].strip()] = row[1].strip()
    return out


def true_class_for(source: str, labels: Mapping[str, str] | str | None) -> str | None:
    """The true class of an image: ``labels="dirname"`` uses its folder's name; a mapping is looked up
    by full path, file name, then stem."""
    if labels is None:
        return None
    p = Path(source)
    if labels == "dirname":
        return p.parent.name or None
    if isinstance(labels, str):
        raise FeaturelensError(f"unknown labels source {labels!r}; use 'dirname' or a CSV file")
    for key in (source, p.name, p.stem):
        if key in labels:
            return labels[key]
    return None


def build_bundle(
    spec: Any,
    images: Sequence[ImageLike] | Mapping[str, ImageLike],
    out: str | Path,
    *,
    layers: Sequence[str | Unit] | str | None = None,
    target: TargetLike = None,
    params: NetworkParams | None = None,
    labels: Mapping[str, str] | str | None = None,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> Bundle:
    """Explain ``images`` with ``spec`` (a :class:`featurelens.models.ModelSpec`) and write a bundle to ``out``.

    ``images``: paths / PIL images, or a mapping ``id → image``. ``layers``: units, or a selection for
    :func:`featurelens.network.layers.resolve_units` (default: the later half of the activated units).
    ``labels``: true classes (``"dirname"`` or a mapping, see :func:`true_class_for`). ``timings``
    (if given) accumulates seconds per stage: ``capture``, ``clustering``, ``effects``, ``writing``.
    """
    params = params or NetworkParams()
    timings = timings if timings is not None else {}
    items = list(images.items()) if isinstance(images, Mapping) else [(None, im) for im in images]
    if not items:
        raise FeaturelensError("no images to explain")
    if isinstance(layers, Sequence) and not isinstance(layers, str) and layers and all(
            isinstance(u, Unit) for u in layers):
        units: list[Unit] = list(layers)  # type: ignore[arg-type]
    else:
        units = resolve_units(spec.model, spec.sample_input(), layers)  # type: ignore[arg-type]
    layer_list = [u.name for u in units]
    by_name = {u.name: u for u in units}
    tgt = as_target(target)
    named = []
    seen: set[str] = set()
    for i, (name, im) in enumerate(items):
        source = str(im) if isinstance(im, (str, Path)) else (name or f"image {i}")
        base = safe_name(name or (Path(im).stem if isinstance(im, (str, Path)) else f"img{i:04d}"))
        image_id, n = base, 1
        while image_id in seen:
            n += 1
            image_id = f"{base}_{n}"
        seen.add(image_id)
        named.append((image_id, source, im))
    writer = BundleWriter(
        out,
        model={"name": spec.name, "input_size": list(spec.input_size)},
        target=describe_target(tgt),
        class_names=list(spec.class_names or []),
        params={"layers": layer_list, **params.to_dict()},
        method=params.to_dict(),
    )
    for start in range(0, len(named), batch_size):
        chunk = named[start: start + batch_size]
        pils = [as_pil(im) for _, _, im in chunk]
        x = spec.prepare(pils)
        results = explain_network(spec.model, x, units, tgt, params, progress=progress, timings=timings)
        t0, c0 = time.perf_counter(), time.process_time()
        for (image_id, source, _), pil, res in zip(chunk, pils, results):
            for name in layer_list:
                lr = next(r for r in res.layers if r.name == name)
                writer.add_layer(name, lr.channels, lr.feature_size, activation=by_name[name].activation,
                                 conv=by_name[name].conv)
            pred = res.predicted_index if res.predicted_index is not None else -1
            writer.add_image(
                spec.model_view(pil),
                source=source,
                predicted_class=spec.class_name(pred) if pred >= 0 else "n/a",
                predicted_index=pred,
                score=res.score,
                true_class=true_class_for(source, labels),
                image_id=image_id,
                layer_stats=[lr.stats() for lr in res.layers],
            )
            for lr in res.layers:
                for c in lr.clusters:
                    writer.add_cluster(
                        image_id,
                        lr.name,
                        channels=c.channels,
                        weight=c.weight,
                        feature_map=c.feature_map,
                        image_map=c.image_map,
                        effect=c.effect,
                        index=c.index,
                    )
        add_timing(timings, "writing", t0, c0)
    t0, c0 = time.perf_counter(), time.process_time()
    bundle = writer.close()
    add_timing(timings, "writing", t0, c0)
    return bundle

