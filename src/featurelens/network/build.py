"""Images → network explanation → explanation bundle on disk (see :mod:`featurelens.network.bundle`)."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from featurelens.errors import FeaturelensError
from featurelens.imaging import as_pil
from featurelens.network.bundle import METHOD_KEYS, Bundle, BundleWriter, safe_name, write_manifest
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



# ---------------------------------------------------------------------------
# version 3: datasets → shards, streamed, resumable, in-process or on Ray
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadModel:
    """The picklable worker factory: each worker (a Ray actor, or the driver) loads the model once and
    resolves the layers. ``threads``: torch intra-op threads of the worker (None: torch's default)."""

    model: str
    layers: tuple[str, ...]
    trust: bool = False
    threads: int | None = None

    def __call__(self) -> tuple[Any, list[Unit]]:
        import torch

        from featurelens.models import load_model

        if self.threads:
            torch.set_num_threads(self.threads)
        spec = load_model(self.model, trust=self.trust)
        return spec, resolve_units(spec.model, spec.sample_input(), list(self.layers))


@dataclass(frozen=True)
class GivenModel:
    """The in-process worker factory for a model already loaded (not shipped to other processes)."""

    spec: Any
    units: tuple[Unit, ...]

    def __call__(self) -> tuple[Any, list[Unit]]:
        return self.spec, list(self.units)


@dataclass(frozen=True)
class ExplainImages:
    """The per-batch work of a worker: load the images (an unreadable one raises
    :class:`~featurelens.errors.ImageLoadError`, and is skipped), explain them ``batch_size`` at a time
    (:func:`featurelens.network.pipeline.explain_network`) and return one shard record per image: the
    display image, each layer's cluster maps at feature resolution, and :func:`image_meta`.
    Payloads are ``(path, dataset label, true class)``."""

    params: NetworkParams
    target: Any = None
    batch_size: int = 4

    def __call__(self, state: tuple[Any, list[Unit]], image_id: str, payload: Any) -> Any:
        out = self.many(state, [image_id], [payload])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def many(self, state: tuple[Any, list[Unit]], ids: Sequence[str], payloads: Sequence[Any]) -> list[Any]:
        import numpy as np

        from featurelens.errors import ImageLoadError
        from featurelens.imaging import load_image
        from featurelens.network.bundle import image_meta
        from featurelens.network.shards import ImageRecord

        spec, units = state
        tgt = as_target(self.target)
        by_name = {u.name: u for u in units}
        out: list[Any] = [None] * len(ids)
        loaded = []
        for n, (path, _, _) in enumerate(payloads):
            try:
                loaded.append((n, load_image(path)))
            except ImageLoadError as exc:
                out[n] = exc
        for s in range(0, len(loaded), self.batch_size):
            chunk = loaded[s: s + self.batch_size]
            t0, c0 = time.perf_counter(), time.process_time()
            x = spec.prepare([pil for _, pil in chunk])
            results = explain_network(spec.model, x, units, tgt, self.params)
            wall, cpu = (time.perf_counter() - t0) / len(chunk), (time.process_time() - c0) / len(chunk)
            for (n, pil), res in zip(chunk, results):
                path, label, true_class = payloads[n]
                maps, clusters = {}, []
                for lr in res.layers:
                    if lr.clusters:
                        maps[lr.name] = np.stack([c.feature_map for c in lr.clusters]).astype(np.float32)
                    clusters += [{"layer": lr.name, "index": c.index, "channels": c.channels, "weight": c.weight,
                                  "effect": c.effect} for c in lr.clusters]
                pred = res.predicted_index if res.predicted_index is not None else -1
                meta = image_meta(
                    source=str(path), width=int(x.shape[3]), height=int(x.shape[2]),
                    predicted_class=spec.class_name(pred) if pred >= 0 else "n/a", predicted_index=pred,
                    score=res.score, clusters=clusters, true_class=true_class, label=label,
                    layer_stats=[lr.stats() for lr in res.layers],
                    layers=[{"name": lr.name, "channels": int(lr.channels),
                             "feature_size": [int(v) for v in lr.feature_size],
                             "activation": by_name[lr.name].activation, "conv": by_name[lr.name].conv}
                            for lr in res.layers],
                )
                meta["cost"] = {"seconds": round(wall, 4), "cpu_seconds": round(cpu, 4), "pid": os.getpid()}
                out[n] = ImageRecord(ids[n], meta, maps, spec.model_view(pil))
        return out


def dataset_ids(items: Sequence[Any]) -> list[str]:
    """Bundle image ids for dataset items (their relative paths without suffix, made file-system safe;
    a clash gets ``_2``, ``_3``... in sorted order): stable across runs, so ``--resume`` can match them."""
    seen: set[str] = set()
    out = []
    for it in items:
        base = safe_name(Path(it.image_id).with_suffix("").as_posix())
        image_id, n = base, 1
        while image_id in seen:
            n += 1
            image_id = f"{base}_{n}"
        seen.add(image_id)
        out.append(image_id)
    return out


_RESUME_KEYS = ("model", "target", "class_names", "method", "storage")


def _comparable(header: dict[str, Any]) -> dict[str, Any]:
    out = {k: header.get(k) for k in _RESUME_KEYS}
    out["method"] = {k: (header.get("method") or {}).get(k) for k in METHOD_KEYS}
    out["params"] = {k: v for k, v in (header.get("params") or {}).items() if k not in ("workers",)}
    return json.loads(json.dumps(out))


@dataclass
class DatasetRun:
    """What :func:`build_dataset_bundle` did."""

    bundle: Bundle
    run: Any  # featurelens.network.runner.ShardedRun
    dataset: Any  # featurelens.network.datasets.Dataset (the selection)
    classes: Any  # featurelens.network.datasets.ClassResolution | None
    skipped: list[dict[str, str]]


def build_dataset_bundle(
    spec: Any,
    dataset: Any,
    out: str | Path,
    *,
    layers: Sequence[str | Unit] | str | None = None,
    target: TargetLike = None,
    params: NetworkParams | None = None,
    classes: Any = None,
    executor: Any = None,
    factory: Callable[[], Any] | None = None,
    resume: bool = False,
    shard_size: int = 8,
    batch_size: int = 4,
    encoding: str = "float16",
    display_size: int = 256,
    write_on: str = "worker",
    progress: Any = False,
    dataset_info: dict[str, Any] | None = None,
    command: str | None = None,
) -> DatasetRun:
    """Explain a :class:`featurelens.network.datasets.Dataset` into a version-3 (sharded) bundle at ``out``.

    Each executor batch of ``shard_size`` images becomes one shard, written as soon as it is done;
    ``bundle.json`` is written at the start (``complete: false``) and rebuilt from the shards at the end.
    ``resume=True`` continues a killed run with the same settings (the images already in shards are
    skipped); without it a folder holding a bundle is refused. The folder is locked for the run.
    ``classes``: a :class:`~featurelens.network.datasets.ClassResolution` giving the true classes.
    ``executor``: :mod:`featurelens.network.executor` (default in-process); ``factory``: the worker
    factory (default: ``spec`` as loaded; a Ray run needs :class:`LoadModel`).
    """
    from featurelens.network.locking import BundleLock
    from featurelens.network.runner import read_skipped, run_to_shards

    params = params or NetworkParams()
    if isinstance(layers, Sequence) and not isinstance(layers, str) and layers and all(
            isinstance(u, Unit) for u in layers):
        units: list[Unit] = list(layers)  # type: ignore[arg-type]
    else:
        units = resolve_units(spec.model, spec.sample_input(), layers)  # type: ignore[arg-type]
    tgt = as_target(target)
    root = Path(out)
    ids = dataset_ids(dataset.items)
    work = []
    for image_id, it in zip(ids, dataset.items):
        true_class = None
        if it.label is not None:
            true_class = classes.true_class(it.label)[0] if classes is not None else it.label
        work.append((image_id, (str(it.path), it.label, true_class)))
    header = {
        "model": {"name": spec.name, "input_size": list(spec.input_size)},
        "target": describe_target(tgt),
        "class_names": list(spec.class_names or []),
        "params": {"layers": [u.name for u in units], **params.to_dict()},
        "method": params.to_dict(),
        "storage": {"shards": "shards", "encoding": encoding, "display_size": int(display_size),
                    "images_per_shard": int(shard_size)},
        "dataset": {**(dataset_info or {}), "layout": dataset.layout, "images": len(work),
                    "label_problems": classes.problems() if classes is not None else []},
    }
    factory = factory or GivenModel(spec, tuple(units))
    explain = ExplainImages(params, tgt, batch_size)
    data_skipped = [{"where": s.where, "reason": s.reason} for s in dataset.skipped]
    with BundleLock(root, command=command):
        manifest = root / "bundle.json"
        if manifest.exists():
            if not resume:
                raise FeaturelensError(f"{root} already holds a bundle; resume it with --resume, or choose an "
                                       "empty output folder")
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise FeaturelensError(f"{manifest}: unreadable ({exc}); cannot resume") from None
            if old.get("version") != 3:
                raise FeaturelensError(f"{root} holds a version-{old.get('version')} bundle; resume works on "
                                       "version-3 bundles only")
            if _comparable(old) != _comparable(header):
                diff = [k for k in (*_RESUME_KEYS, "params") if _comparable(old).get(k) != _comparable(header).get(k)]
                raise FeaturelensError(f"{root}: cannot resume with other settings than the first run "
                                       f"(they differ in: {', '.join(diff)})")
            header["created"] = old.get("created")
        elif resume and (root / "shards").is_dir() and any((root / "shards").iterdir()):
            raise FeaturelensError(f"{root}: shards without a bundle.json; cannot resume")
        if not manifest.exists():
            write_manifest(root, header, order=[], skipped=data_skipped, complete=False)
        run = run_to_shards(work, factory, explain, root, executor=executor, batch_size=shard_size, resume=resume,
                            write_on=write_on, encoding=encoding, display_size=display_size, progress=progress,
                            lock=False)
        path_of = {image_id: payload[0] for image_id, payload in work}
        skipped = data_skipped + [{"where": path_of.get(s.where, s.where), "reason": s.reason}
                                  for s in read_skipped(root)]
        bundle = write_manifest(root, header, order=ids, skipped=skipped, complete=True)
    return DatasetRun(bundle, run, dataset, classes, skipped)
