"""The explanation bundle: a folder that later tools read without the model.

Layout (schema ``featurelens.network-bundle``, version 2)::

    BUNDLE/
      bundle.json                       # the manifest, see below
      images/<image_id>.png             # the image as the model saw it (model input size, RGB)
      maps/<image_id>/<layer>/<k>.npy   # cluster map at feature resolution, float32 in [0, 1]
      maps/<image_id>/<layer>/<k>.png   # cluster map at image resolution, 8-bit grayscale
      maps/<image_id>/<layer>/<k>_overlay.png   # the map over the image, for display

``bundle.json``::

    {
      "schema": "featurelens.network-bundle", "version": 2, "created": ISO-8601,
      "model": {"name": str, "input_size": [H, W]},
      "target": {"kind": str, "description": str},
      "class_names": [str, ...],          # candidate classes (the game's class list)
      "params": {...},                    # every constant the pipeline used
      "method": {                         # v2: how the maps were made
          "mode": str | null,               # paper, faithful, stable or pca
          "prune_rule": str | null,         # paper (w_k > d(K)) or uniform (w_k >= f*100/K)
          "cluster_map_rule": str | null,   # raw (weighted raw activations) or normalized
          "smooth_sigma": float | null      # Gaussian smoothing of the image maps (null: none)
      },
      "layers": [{"name": str, "channels": int, "feature_size": [h, w],
                  "activation": str | null, # v2: e.g. "ReLU6"; null = a raw conv output
                  "conv": str | null}, ...],# v2: the conv the unit follows
      "images": [{
          "id": str, "file": "images/<id>.png", "source": str,
          "width": int, "height": int,      # of the stored image (= model input size)
          "true_class": str | null, "predicted_class": str, "predicted_index": int, "score": float,
          "clusters": [{
              "id": "<image_id>/<layer>/<k>", "layer": str, "index": int,
              "channels": [int, ...], "weight": float,   # percent of the layer's total weight
              "effect": float | null,                   # measured score drop when its region is deleted
              "map_npy": str, "map_png": str, "overlay_png": str
          }, ...],
          "layer_stats": [{                # optional; when present, name and kept_channels are required
              "name": str, "kept_channels": int, "k": int,
              "silhouette": float | null, "clusters": int,
              "stability": float,          # optional: mean ARI of re-clusterings under float-sized noise
              "map_stability": float       # optional: mean weighted best-match correlation of their maps
          }, ...]
      }, ...]
    }

Version 1 bundles (clusters of raw conv outputs, ``0.9·100/K`` pruning, averaged min-max maps,
σ = 1 smoothing) still load: :func:`load_bundle` upgrades them in memory to version 2 (layers get
``activation: null``, ``method`` is read from ``params``), warns once with
:class:`BundleUpgradeWarning` and sets ``Bundle.upgraded_from = 1``. Any other version is an error.

Optional keys may be absent; readers must ignore keys they do not know. Within one image and
layer, cluster ``index`` 0 is the heaviest cluster (clusters are ranked by weight).

Paths are relative to the bundle folder and use ``/``. Cluster ids are stable: the same image id,
layer name and cluster index always give the same id.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featurelens.errors import BundleError

SCHEMA = "featurelens.network-bundle"
VERSION = 3  # what `featurelens network` writes: the sharded layout
SUPPORTED_VERSIONS = (1, 2, 3)
FILE_VERSION = 2  # what :class:`BundleWriter` writes: a file per map, PNGs and overlays
SHARD_DIR = "shards"
IMAGE_MAP_SUFFIX = "#image"  # v3 shard map name of stored image-resolution maps (upgrades only, see upgrade_bundle)
METHOD_KEYS = ("mode", "prune_rule", "cluster_map_rule", "smooth_sigma")


class BundleUpgradeWarning(UserWarning):
    """A bundle of an older schema version was read and upgraded in memory."""

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """A file-system-safe version of ``text`` (layer names, image ids)."""
    out = _SAFE.sub("_", text).strip("._")
    return out or "x"


@dataclass
class Cluster:
    id: str
    layer: str
    index: int
    channels: list[int]
    weight: float
    effect: float | None
    map_npy: str | None = None  # v1/v2 only; None in v3 (maps live in the image's shard)
    map_png: str | None = None  # v1/v2 only; v3 renders it on demand (Bundle.load_image_map)
    overlay_png: str | None = None  # v1/v2 only; v3 renders it on demand (Bundle.overlay_image)

    @property
    def size(self) -> int:
        return len(self.channels)


@dataclass
class BundleImage:
    id: str
    file: str
    source: str
    width: int
    height: int
    true_class: str | None
    predicted_class: str
    predicted_index: int
    score: float
    clusters: list[Cluster] = field(default_factory=list)
    layer_stats: list[dict[str, Any]] = field(default_factory=list)
    shard: str | None = None  # v3: key of the shard holding its display image and maps
    label: str | None = None  # v3: the dataset's raw label (``true_class`` is the matched model class)


@dataclass
class Layer:
    name: str
    channels: int
    feature_size: list[int]
    activation: str | None = None  # the activation's class name; None = a raw conv output
    conv: str | None = None  # the conv the unit follows


@dataclass
class Bundle:
    """A loaded bundle. ``root`` is the folder; paths inside are relative to it."""

    root: Path
    model: dict[str, Any]
    target: dict[str, Any]
    class_names: list[str]
    params: dict[str, Any]
    layers: list[Layer]
    images: list[BundleImage]
    created: str = ""
    version: int = VERSION
    method: dict[str, Any] = field(default_factory=dict)
    upgraded_from: int | None = None  # 1 when a version-1 bundle was read and upgraded in memory
    storage: dict[str, Any] = field(default_factory=dict)  # v3: {"shards", "encoding", "display_size"}
    dataset: dict[str, Any] = field(default_factory=dict)  # v3: how the images were chosen, label problems
    skipped: list[dict[str, str]] = field(default_factory=list)  # v3: files left out, {"where", "reason"}
    complete: bool = True  # v3: False while a run is writing it (or was killed: resume it)
    _records: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- access helpers -------------------------------------------------
    def layer_stat_values(self, key: str) -> list[float]:
        """The values of ``key`` (e.g. ``"stability"``) over every image's ``layer_stats`` that have it."""
        return [float(st[key]) for im in self.images for st in im.layer_stats if st.get(key) is not None]

    def image(self, image_id: str) -> BundleImage:
        for im in self.images:
            if im.id == image_id:
                return im
        raise BundleError(f"no image {image_id!r} in bundle {self.root}")

    def cluster(self, cluster_id: str) -> Cluster:
        for im in self.images:
            for c in im.clusters:
                if c.id == cluster_id:
                    return c
        raise BundleError(f"no cluster {cluster_id!r} in bundle {self.root}")

    def clusters(self) -> list[tuple[BundleImage, Cluster]]:
        return [(im, c) for im in self.images for c in im.clusters]

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def sharded(self) -> bool:
        """True for the v3 layout (maps and display images in shards, rendered on demand)."""
        return self.version >= 3

    def image_of(self, cluster: Cluster) -> BundleImage:
        """The image a cluster belongs to (its id is ``<image_id>/<layer>/<index>``)."""
        return self.image(cluster.id.removesuffix(f"/{cluster.layer}/{cluster.index}"))

    def _shard_records(self, key: str) -> dict[str, Any]:
        """The decoded records of shard ``key`` (the last few shards read are kept in memory)."""
        from featurelens.network.shards import ShardStore

        if key not in self._records:
            if len(self._records) >= 4:
                self._records.pop(next(iter(self._records)))
            store = ShardStore(self.root / self.storage.get("shards", SHARD_DIR))
            try:
                self._records[key] = {r.image_id: r for r in store.read_shard(key)}
            except (OSError, KeyError, ValueError) as exc:
                raise BundleError(f"{self.root}: shard {key} cannot be read ({exc})") from None
        return self._records[key]

    def _record(self, image: BundleImage) -> Any:
        rec = self._shard_records(str(image.shard)).get(image.id)
        if rec is None:
            raise BundleError(f"{self.root}: image {image.id!r} is not in its shard {image.shard}")
        return rec

    def load_map(self, cluster: Cluster) -> np.ndarray:
        """The cluster map at feature resolution (float32, [0, 1]; v3: to float16 precision)."""
        if not self.sharded:
            return np.load(self.path(str(cluster.map_npy)))
        rec = self._record(self.image_of(cluster))
        stack = rec.maps.get(cluster.layer)
        if stack is None or cluster.index >= stack.shape[0]:
            raise BundleError(f"{self.root}: no map for cluster {cluster.id!r} in shard {self.image_of(cluster).shard}")
        return np.array(stack[cluster.index], dtype=np.float32)

    def load_image_map(self, cluster: Cluster, size: tuple[int, int] | None = None) -> np.ndarray:
        """The cluster map at image resolution ``size`` = (H, W) (default: the image's ``height, width``,
        the model input size), float32 in [0, 1].

        v1/v2 read the stored 8-bit PNG (resized bilinearly if ``size`` differs); v3 renders it from the
        feature-resolution map exactly as the pipeline does (bilinear upsampling, min-max, the bundle's
        ``method.smooth_sigma`` Gaussian smoothing, min-max: :func:`featurelens.network.clustering.finish_map`).
        """
        im = self.image_of(cluster)
        size = (im.height, im.width) if size is None else (int(size[0]), int(size[1]))
        if not self.sharded:
            with Image.open(self.path(str(cluster.map_png))) as png:
                m = np.asarray(png.convert("L"), dtype=np.float32) / 255.0
            if m.shape != size:
                from featurelens.imaging import resize_map_np

                m = np.clip(resize_map_np(m, size), 0.0, 1.0).astype(np.float32)
            return m
        import torch

        from featurelens.network.clustering import finish_map

        stored = self._record(im).maps.get(f"{cluster.layer}{IMAGE_MAP_SUFFIX}")
        if stored is not None:  # an upgraded bundle whose image maps were not made from its feature maps
            m = np.clip(stored[cluster.index], 0.0, 1.0).astype(np.float32)
            if m.shape != size:
                from featurelens.imaging import resize_map_np

                m = np.clip(resize_map_np(m, size), 0.0, 1.0).astype(np.float32)
            return m
        fmap = torch.from_numpy(self.load_map(cluster))
        return finish_map(fmap, size, self.method.get("smooth_sigma")).numpy().astype(np.float32)

    def display_image(self, image: BundleImage | str) -> Image.Image:
        """The photo as stored for display (RGB PIL): v1/v2 the PNG at model input size, v3 the shard's
        JPEG (the model's view, longest side at most ``storage.display_size``)."""
        im = self.image(image) if isinstance(image, str) else image
        if not self.sharded:
            with Image.open(self.path(im.file)) as f:
                return f.convert("RGB")
        out = self._record(im).display_image()
        if out is None:
            raise BundleError(f"{self.root}: image {im.id!r} has no display image in its shard")
        return out

    def overlay_image(self, cluster: Cluster, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The cluster map over the display photo (RGB PIL, display size). v1/v2 with default arguments
        read the stored overlay PNG; otherwise it is rendered (:func:`featurelens.imaging.overlay`)."""
        from featurelens.imaging import overlay

        if not self.sharded and cluster.overlay_png and alpha == 0.5 and colormap == "jet":
            with Image.open(self.path(cluster.overlay_png)) as f:
                return f.convert("RGB")
        photo = self.display_image(self.image_of(cluster))
        m = self.load_image_map(cluster, size=(photo.height, photo.width))
        return Image.fromarray(overlay(photo, m, alpha=alpha, colormap=colormap))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema": SCHEMA,
            "version": self.version,
            "created": self.created,
            "model": self.model,
            "target": self.target,
            "class_names": self.class_names,
            "params": self.params,
            "method": self.method,
            "layers": [asdict(layer) for layer in self.layers],
            "images": [_image_dict(im, self.version) for im in self.images],
        }
        if self.version >= 3:
            out.update(storage=self.storage, dataset=self.dataset, skipped=self.skipped, complete=self.complete)
        return out


_V3_CLUSTER_SKIP = ("map_npy", "map_png", "overlay_png")


def _image_dict(im: BundleImage, version: int) -> dict[str, Any]:
    d = asdict(im)
    if version >= 3:
        d["clusters"] = [{k: v for k, v in c.items() if k not in _V3_CLUSTER_SKIP} for c in d["clusters"]]
    else:
        d.pop("shard")
        d.pop("label")
    return d


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
def _req(
    obj: Any, key: str, types: type | tuple[type, ...], where: str, errors: list[str], nullable: bool = False
) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        errors.append(f"{where}: missing key {key!r}")
        return None
    value = obj[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        errors.append(f"{where}.{key}: expected {types}, got bool")
        return None
    if not isinstance(value, types):
        errors.append(
            f"{where}.{key}: expected {getattr(types, '__name__', types)}, got {type(value).__name__}"
        )
        return None
    return value


def validate_dict(data: Any, root: Path | None = None, check_files: bool = True) -> list[str]:
    """Return every problem found in a ``bundle.json`` dictionary (empty list = valid).

    With ``root`` and ``check_files``, also checks that every referenced file exists.
    An unknown schema or version is reported as the first and only problem.
    """
    errors: list[str] = []
    if not isinstance(data, dict):
        return ["bundle.json: top level must be an object"]
    if data.get("schema") != SCHEMA:
        return [f"bundle.json: schema is {data.get('schema')!r}, expected {SCHEMA!r}"]
    version = data.get("version")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        return [
            f"bundle.json: version {version!r} is not supported by this featurelens "
            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        ]
    model = _req(data, "model", dict, "bundle", errors)
    if model is not None:
        _req(model, "name", str, "model", errors)
        size = _req(model, "input_size", list, "model", errors)
        if size is not None and (len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
            errors.append("model.input_size: expected [H, W] of positive integers")
    target = _req(data, "target", dict, "bundle", errors)
    if target is not None:
        _req(target, "kind", str, "target", errors)
    class_names = _req(data, "class_names", list, "bundle", errors)
    if class_names is not None and not all(isinstance(c, str) and c for c in class_names):
        errors.append("class_names: every entry must be a non-empty string")
    _req(data, "params", dict, "bundle", errors)
    if version >= 2:
        method = _req(data, "method", dict, "bundle", errors)
        if method is not None:
            for key in METHOD_KEYS:
                _req(method, key, (float, int) if key == "smooth_sigma" else str, "method", errors, nullable=True)
    layers = _req(data, "layers", list, "bundle", errors) or []
    layer_names: set[str] = set()
    for i, layer in enumerate(layers):
        where = f"layers[{i}]"
        name = _req(layer, "name", str, where, errors)
        if name is not None:
            if name in layer_names:
                errors.append(f"{where}.name: duplicate layer {name!r}")
            layer_names.add(name)
        _req(layer, "channels", int, where, errors)
        _req(layer, "feature_size", list, where, errors)
        if version >= 2:
            _req(layer, "activation", str, where, errors, nullable=True)
    images = _req(data, "images", list, "bundle", errors) or []
    image_ids: set[str] = set()
    cluster_ids: set[str] = set()
    for i, im in enumerate(images):
        where = f"images[{i}]"
        image_id = _req(im, "id", str, where, errors)
        if image_id is not None:
            if image_id in image_ids:
                errors.append(f"{where}.id: duplicate image id {image_id!r}")
            image_ids.add(image_id)
        files = [_req(im, "file", str, where, errors)] if version < 3 else []
        if version >= 3:
            _req(im, "file", str, where, errors)
            _req(im, "shard", str, where, errors)
        _req(im, "source", str, where, errors)
        _req(im, "width", int, where, errors)
        _req(im, "height", int, where, errors)
        _req(im, "true_class", str, where, errors, nullable=True)
        _req(im, "predicted_class", str, where, errors)
        _req(im, "predicted_index", int, where, errors)
        score = _req(im, "score", (int, float), where, errors)
        if score is not None and not math.isfinite(score):
            errors.append(f"{where}.score: must be finite")
        for j, c in enumerate(_req(im, "clusters", list, where, errors) or []):
            cw = f"{where}.clusters[{j}]"
            cid = _req(c, "id", str, cw, errors)
            if cid is not None:
                if cid in cluster_ids:
                    errors.append(f"{cw}.id: duplicate cluster id {cid!r}")
                cluster_ids.add(cid)
            layer = _req(c, "layer", str, cw, errors)
            if layer is not None and layer not in layer_names:
                errors.append(f"{cw}.layer: {layer!r} is not among the bundle's layers")
            _req(c, "index", int, cw, errors)
            channels = _req(c, "channels", list, cw, errors)
            if channels is not None and (
                not channels or not all(isinstance(k, int) and k >= 0 for k in channels)
            ):
                errors.append(f"{cw}.channels: expected a non-empty list of channel indices")
            weight = _req(c, "weight", (int, float), cw, errors)
            if weight is not None and not (math.isfinite(weight) and weight >= 0):
                errors.append(f"{cw}.weight: must be a finite number >= 0")
            effect = _req(c, "effect", (int, float), cw, errors, nullable=True)
            if effect is not None and not math.isfinite(effect):
                errors.append(f"{cw}.effect: must be finite or null")
            if version < 3:
                files += [_req(c, key, str, cw, errors) for key in ("map_npy", "map_png", "overlay_png")]
        stats = im.get("layer_stats") if isinstance(im, dict) else None
        if stats is not None and not (isinstance(stats, list) and all(isinstance(st, dict) for st in stats)):
            errors.append(f"{where}.layer_stats: expected a list of objects")
        elif stats:
            for j, st in enumerate(stats):
                if version >= 2:
                    _req(st, "name", str, f"{where}.layer_stats[{j}]", errors)
                    _req(st, "kept_channels", int, f"{where}.layer_stats[{j}]", errors)
                for key in ("stability", "map_stability"):
                    v = st.get(key)
                    if v is not None and not (isinstance(v, (int, float)) and -1.0 <= v <= 1.0):
                        errors.append(f"{where}.layer_stats[{j}].{key}: must be a number in [-1, 1] or absent")
        if root is not None and check_files:
            for rel in files:
                if rel is not None and not (root / rel).is_file():
                    errors.append(f"{where}: file {rel!r} is missing from the bundle")
    if version >= 3:
        storage = _req(data, "storage", dict, "bundle", errors)
        if storage is not None:
            _req(storage, "shards", str, "storage", errors)
            _req(storage, "encoding", str, "storage", errors)
        skipped = data.get("skipped", [])
        if not (isinstance(skipped, list) and all(isinstance(x, dict) and isinstance(x.get("where"), str)
                                                  for x in skipped)):
            errors.append("skipped: expected a list of {where, reason} objects")
        if not isinstance(data.get("complete", True), bool):
            errors.append("complete: expected true or false")
        if root is not None and check_files and storage is not None and not errors:
            errors += _check_shard_refs(data, root / str(storage.get("shards", SHARD_DIR)))
    return errors


def _check_shard_refs(data: dict[str, Any], shard_root: Path) -> list[str]:
    """v3: every image is in the index of its shard, with one map per cluster at its layer's size."""
    from featurelens.network.shards import ShardStore

    errors: list[str] = []
    store = ShardStore(shard_root)
    sizes = {layer["name"]: list(layer["feature_size"]) for layer in data["layers"]}
    entries: dict[str, dict[str, Any]] = {}
    for key in sorted({im["shard"] for im in data["images"]}):
        if not (shard_root / f"{key}.json").is_file():
            errors.append(f"shard {key}: {shard_root.name}/{key}.json is missing from the bundle")
            continue
        try:
            entries[key] = {e["id"]: e for e in store.index(key)["images"]}
        except (BundleError, KeyError, TypeError) as exc:
            errors.append(f"shard {key}: {exc}")
    for i, im in enumerate(data["images"]):
        if im["shard"] not in entries:
            continue
        entry = entries[im["shard"]].get(im["id"])
        if entry is None:
            errors.append(f"images[{i}]: image {im['id']!r} is not in shard {im['shard']}")
            continue
        per_layer: dict[str, int] = {}
        for c in im["clusters"]:
            per_layer[c["layer"]] = max(per_layer.get(c["layer"], 0), c["index"] + 1)
        for layer, n in per_layer.items():
            spec = entry.get("maps", {}).get(layer)
            shape = None if spec is None else list(spec.get("shape", []))
            if shape is None or len(shape) != 3 or shape[0] < n or shape[1:] != sizes.get(layer):
                errors.append(f"images[{i}]: shard {im['shard']} holds maps {shape} for layer {layer!r}, "
                              f"expected [{n}, {', '.join(map(str, sizes.get(layer, [])))}]")
    return errors


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest as version 2: its layers were raw conv outputs (``activation: null``), its
    method is read from ``params`` (v1 defaults: uniform pruning, normalised maps, σ = 1)."""
    params = data.get("params") or {}
    out = dict(data, version=2)
    out["method"] = {
        "mode": params.get("mode"),
        "prune_rule": params.get("prune_rule", "uniform"),
        "cluster_map_rule": params.get("cluster_map_rule", "normalized"),
        "smooth_sigma": params.get("smooth_sigma", 1.0),
    }
    out["layers"] = [{**layer, "activation": None, "conv": layer.get("name")} for layer in data.get("layers", [])]
    return out


def _from_dict(data: dict[str, Any], root: Path) -> Bundle:
    upgraded_from = None
    if data["version"] == 1:
        upgraded_from = 1
        data = upgrade_v1(data)
    images = []
    for im in data["images"]:
        clusters = [Cluster(**{k: c[k] for k in Cluster.__dataclass_fields__ if k in c}) for c in im["clusters"]]
        fields = {k: im[k] for k in BundleImage.__dataclass_fields__
                  if k not in ("clusters", "layer_stats") and k in im}
        images.append(BundleImage(**fields, clusters=clusters, layer_stats=list(im.get("layer_stats") or [])))
    return Bundle(
        root=root,
        model=data["model"],
        target=data["target"],
        class_names=list(data["class_names"]),
        params=data["params"],
        layers=[Layer(**{k: layer[k] for k in Layer.__dataclass_fields__ if k in layer}) for layer in data["layers"]],
        images=images,
        created=data.get("created", ""),
        version=data["version"],
        method=dict(data.get("method") or {}),
        upgraded_from=upgraded_from,
        storage=dict(data.get("storage") or {}),
        dataset=dict(data.get("dataset") or {}),
        skipped=list(data.get("skipped") or []),
        complete=bool(data.get("complete", True)),
    )


def load_bundle(path: str | Path, check_files: bool = True) -> Bundle:
    """Load and validate a bundle folder (or its ``bundle.json``); raise :class:`BundleError`."""
    path = Path(path)
    manifest = path if path.name == "bundle.json" else path / "bundle.json"
    if not manifest.is_file():
        raise BundleError(f"{path} is not an explanation bundle (no bundle.json found)")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {manifest}: {exc}") from None
    errors = validate_dict(data, manifest.parent, check_files=check_files)
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise BundleError(f"invalid bundle {manifest.parent}: " + "; ".join(errors[:5]) + more)
    bundle = _from_dict(data, manifest.parent)
    if bundle.upgraded_from is not None:
        warnings.warn(f"{manifest.parent}: a version-{bundle.upgraded_from} bundle (raw conv outputs), read as "
                      f"version {FILE_VERSION}", BundleUpgradeWarning, stacklevel=2)
    return bundle


def validate_bundle(path: str | Path) -> list[str]:
    """Every problem of the bundle at ``path`` as a list of messages (empty = valid)."""
    path = Path(path)
    manifest = path if path.name == "bundle.json" else path / "bundle.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{path}: no bundle.json"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{manifest}: {exc}"]
    errors = validate_dict(data, manifest.parent)
    if not errors and data.get("version", 0) >= 3:
        from featurelens.network.shards import validate_shards

        shard_root = manifest.parent / str(data["storage"].get("shards", SHARD_DIR))
        errors += [f"{data['storage'].get('shards', SHARD_DIR)}/{p}" for p in validate_shards(shard_root)]
        listed = {im["id"] for im in data["images"]}
        from featurelens.network.shards import ShardStore

        try:
            stored = ShardStore(shard_root).done_ids()
        except BundleError as exc:
            stored = set()
            errors.append(str(exc))
        extra = sorted(stored - listed)
        if extra and data.get("complete", True):
            errors.append(f"{len(extra)} image(s) stored in shards but not listed in bundle.json "
                          f"(e.g. {extra[0]!r}): resume the run to finish it")
        if not data.get("complete", True):
            errors.append("the run that writes this bundle has not finished (or was killed): resume it")
    return errors


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
def _to_uint8(arr: np.ndarray) -> np.ndarray:
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class BundleWriter:
    """Write a bundle folder step by step; :meth:`close` writes ``bundle.json`` atomically.

    >>> w = BundleWriter(out, model={"name": "m", "input_size": [224, 224]},
    ...                  target={"kind": "predicted-class", "description": "top-1 logit"},
    ...                  class_names=["cat", "dog"], params={})
    >>> w.add_layer("blocks.12", channels=112, feature_size=(14, 14))
    >>> img_id = w.add_image(rgb_uint8, source="cat.jpg", predicted_class="cat", predicted_index=0, score=9.1)
    >>> w.add_cluster(img_id, "blocks.12", channels=[3, 7], weight=41.0, feature_map=m, image_map=M)
    >>> bundle = w.close()
    """

    def __init__(
        self,
        root: str | Path,
        *,
        model: dict[str, Any],
        target: dict[str, Any],
        class_names: list[str],
        params: dict[str, Any],
        method: dict[str, Any] | None = None,
        overlay_alpha: float = 0.5,
        colormap: str = "jet",
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / "bundle.json").exists():
            # never mix a new bundle with the files of an old one
            raise BundleError(f"{self.root} already holds a bundle; choose an empty output folder")
        self.bundle = Bundle(
            root=self.root,
            model=dict(model),
            target=dict(target),
            class_names=list(class_names),
            params=dict(params),
            layers=[],
            images=[],
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            version=FILE_VERSION,
            method={key: (method or params).get(key) for key in METHOD_KEYS},
        )
        self._images: dict[str, BundleImage] = {}
        self._rgb: dict[str, np.ndarray] = {}
        self.overlay_alpha = overlay_alpha
        self.colormap = colormap

    def add_layer(
        self,
        name: str,
        channels: int,
        feature_size: tuple[int, int] | list[int],
        activation: str | None = None,
        conv: str | None = None,
    ) -> None:
        if any(layer.name == name for layer in self.bundle.layers):
            return
        self.bundle.layers.append(
            Layer(name=name, channels=int(channels), feature_size=[int(s) for s in feature_size],
                  activation=activation, conv=conv)
        )

    def add_image(
        self,
        rgb: np.ndarray,
        *,
        source: str,
        predicted_class: str,
        predicted_index: int,
        score: float,
        true_class: str | None = None,
        image_id: str | None = None,
        layer_stats: list[dict[str, Any]] | None = None,
    ) -> str:
        """Store the image (H×W×3 uint8, as the model saw it) and return its id."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise BundleError("add_image expects an H×W×3 uint8 RGB array")
        image_id = safe_name(image_id or f"img{len(self.bundle.images):04d}")
        if image_id in self._images:
            raise BundleError(f"duplicate image id {image_id!r}")
        rel = f"images/{image_id}.png"
        (self.root / "images").mkdir(exist_ok=True)
        Image.fromarray(rgb).save(self.root / rel)
        im = BundleImage(
            id=image_id,
            file=rel,
            source=str(source),
            width=int(rgb.shape[1]),
            height=int(rgb.shape[0]),
            true_class=true_class,
            predicted_class=str(predicted_class),
            predicted_index=int(predicted_index),
            score=float(score),
            layer_stats=list(layer_stats or []),
        )
        self.bundle.images.append(im)
        self._images[image_id] = im
        self._rgb[image_id] = rgb
        return image_id

    def add_cluster(
        self,
        image_id: str,
        layer: str,
        *,
        channels: list[int],
        weight: float,
        feature_map: np.ndarray,
        image_map: np.ndarray,
        effect: float | None = None,
        index: int | None = None,
    ) -> Cluster:
        """Store one cluster: its maps (both in [0, 1]) and an overlay; return the record."""
        from featurelens.imaging import overlay  # local import: imaging is a sibling layer

        if image_id not in self._images:
            raise BundleError(f"unknown image id {image_id!r}; call add_image first")
        if not any(lay.name == layer for lay in self.bundle.layers):
            raise BundleError(f"unknown layer {layer!r}; call add_layer first")
        im = self._images[image_id]
        if index is None:
            index = sum(1 for c in im.clusters if c.layer == layer)
        image_map = np.asarray(image_map, dtype=np.float32)
        if image_map.shape != (im.height, im.width):
            raise BundleError(f"image_map has shape {image_map.shape}, expected {(im.height, im.width)}")
        folder = f"maps/{image_id}/{safe_name(layer)}"
        (self.root / folder).mkdir(parents=True, exist_ok=True)
        npy, png, ov = f"{folder}/{index}.npy", f"{folder}/{index}.png", f"{folder}/{index}_overlay.png"
        np.save(self.root / npy, np.asarray(feature_map, dtype=np.float32))
        Image.fromarray(_to_uint8(image_map), mode="L").save(self.root / png, compress_level=1)
        Image.fromarray(
            overlay(self._rgb[image_id], image_map, alpha=self.overlay_alpha, colormap=self.colormap)
        ).save(self.root / ov, compress_level=1)
        cluster = Cluster(
            id=f"{image_id}/{layer}/{index}",
            layer=layer,
            index=int(index),
            channels=[int(k) for k in channels],
            weight=float(weight),
            effect=None if effect is None else float(effect),
            map_npy=npy,
            map_png=png,
            overlay_png=ov,
        )
        im.clusters.append(cluster)
        return cluster

    def close(self) -> Bundle:
        data = self.bundle.to_dict()
        errors = validate_dict(data, self.root)
        if errors:
            raise BundleError("refusing to write an invalid bundle: " + "; ".join(errors[:5]))
        tmp = self.root / "bundle.json.tmp"
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(self.root / "bundle.json")
        return self.bundle


# ---------------------------------------------------------------------------
# version 3: the manifest assembled from the shards
# ---------------------------------------------------------------------------
def image_meta(
    *,
    source: str,
    width: int,
    height: int,
    predicted_class: str,
    predicted_index: int,
    score: float,
    clusters: list[dict[str, Any]],
    layers: list[dict[str, Any]],
    true_class: str | None = None,
    label: str | None = None,
    layer_stats: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What a shard index keeps of one image (v3): everything ``bundle.json`` lists about it, so that the
    manifest can be rebuilt from the shards alone (after a killed run). ``clusters``: ``{layer, index,
    channels, weight, effect}``, their maps being ``maps[layer][index]`` of the record; ``layers``:
    ``{name, channels, feature_size, activation, conv}``."""
    return {
        "source": str(source), "width": int(width), "height": int(height), "true_class": true_class,
        "label": label, "predicted_class": str(predicted_class), "predicted_index": int(predicted_index),
        "score": float(score), "layer_stats": list(layer_stats or []),
        "clusters": [{"layer": c["layer"], "index": int(c["index"]), "channels": [int(k) for k in c["channels"]],
                      "weight": float(c["weight"]), "effect": None if c.get("effect") is None else float(c["effect"])}
                     for c in clusters],
        "layers": layers,
    }


def write_manifest(
    root: str | Path,
    header: dict[str, Any],
    *,
    order: list[str] | None = None,
    skipped: list[dict[str, str]] | None = None,
    complete: bool = True,
) -> Bundle:
    """Write a v3 ``bundle.json`` (atomically) from ``header`` (``model``, ``target``, ``class_names``,
    ``params``, ``method``, ``storage``, ``dataset``, optionally ``created``) and the image entries of
    every complete shard under ``root/storage.shards``. Images come in ``order`` (ids; the others after,
    sorted), layers in the order of ``params.layers``. Returns the loaded bundle."""
    from featurelens.network.shards import ShardStore

    root = Path(root)
    storage = dict(header.get("storage") or {})
    storage.setdefault("shards", SHARD_DIR)
    store = ShardStore(root / storage["shards"])
    entries: dict[str, tuple[str, dict[str, Any]]] = {}
    for key in store.keys():
        for e in store.index(key)["images"]:
            entries[e["id"]] = (key, e)
    rank = {iid: i for i, iid in enumerate(order or [])}
    ids = sorted(entries, key=lambda iid: (rank.get(iid, len(rank)), iid))
    layers: dict[str, dict[str, Any]] = {}
    images = []
    for iid in ids:
        key, e = entries[iid]
        meta = e["meta"]
        for layer in meta.get("layers", []):
            layers.setdefault(layer["name"], layer)
        images.append({
            "id": iid, "file": f"{storage['shards']}/{key}.npz", "shard": key,
            **{k: meta.get(k) for k in ("source", "width", "height", "true_class", "label", "predicted_class",
                                         "predicted_index", "score", "layer_stats")},
            "clusters": [{"id": f"{iid}/{c['layer']}/{c['index']}", **c} for c in meta["clusters"]],
        })
    wanted = list((header.get("params") or {}).get("layers") or [])
    names = [n for n in wanted if n in layers] + [n for n in layers if n not in wanted]
    data = {
        "schema": SCHEMA, "version": 3,
        "created": header.get("created") or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **{k: header[k] for k in ("model", "target", "class_names", "params")},
        "method": {key: (header.get("method") or {}).get(key) for key in METHOD_KEYS},
        "layers": [{k: layers[n].get(k) for k in ("name", "channels", "feature_size", "activation", "conv")}
                   for n in names],
        "storage": storage, "dataset": dict(header.get("dataset") or {}),
        "skipped": list(skipped or []), "complete": bool(complete), "images": images,
    }
    errors = validate_dict(data, root)
    if errors:
        raise BundleError("refusing to write an invalid bundle: " + "; ".join(errors[:5]))
    tmp = root / ".bundle.json.tmp"
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    tmp.replace(root / "bundle.json")
    return _from_dict(data, root)


def upgrade_bundle(src: str | Path, dst: str | Path, *, shard_size: int = 64, encoding: str = "float16",
                   display_size: int = 256, tolerance: float = 2.0 / 255.0) -> Bundle:
    """Convert a version-1 or -2 bundle at ``src`` into a new version-3 bundle at ``dst``.

    Per image: its stored photo becomes the display image, each layer's cluster maps (``.npy``) one
    stack in a shard; the metadata (classes, scores, weights, effects, layer stats) is kept as it is.
    The image-resolution maps of v3 are rendered from the feature maps; where a stored PNG differs from
    that rendering by more than ``tolerance`` (maps not made by this pipeline, or v1's smoothing), the
    image-resolution maps of that layer are stored too (shard map ``<layer>#image``), so that
    :meth:`Bundle.load_image_map` gives back the PNG's values.
    """
    import torch

    from featurelens.network.clustering import finish_map
    from featurelens.network.locking import BundleLock
    from featurelens.network.shards import ImageRecord, write_shard

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BundleUpgradeWarning)
        old = load_bundle(src)
    if old.version >= 3:
        raise BundleError(f"{src} is already a version-{old.version} bundle")
    dst = Path(dst)
    if (dst / "bundle.json").exists():
        raise BundleError(f"{dst} already holds a bundle; choose an empty output folder")
    layers = [asdict(layer) for layer in old.layers]
    with BundleLock(dst):
        for start in range(0, len(old.images), shard_size):
            records = []
            for im in old.images[start: start + shard_size]:
                maps: dict[str, np.ndarray] = {}
                for layer in dict.fromkeys(c.layer for c in im.clusters):
                    cl = {c.index: c for c in im.clusters if c.layer == layer}
                    first = old.load_map(next(iter(cl.values())))
                    stack = np.zeros((max(cl) + 1, *first.shape), np.float32)
                    images = np.zeros((max(cl) + 1, im.height, im.width), np.float32)
                    exact = True
                    for k, c in cl.items():
                        stack[k] = old.load_map(c)
                        images[k] = old.load_image_map(c)
                        again = finish_map(torch.from_numpy(stack[k]), (im.height, im.width),
                                           old.method.get("smooth_sigma")).numpy()
                        exact = exact and float(np.abs(again - images[k]).max()) <= tolerance
                    maps[layer] = stack
                    if not exact:
                        maps[f"{layer}{IMAGE_MAP_SUFFIX}"] = images
                meta = image_meta(
                    source=im.source, width=im.width, height=im.height, predicted_class=im.predicted_class,
                    predicted_index=im.predicted_index, score=im.score, true_class=im.true_class,
                    layer_stats=im.layer_stats, layers=layers,
                    clusters=[{"layer": c.layer, "index": c.index, "channels": c.channels, "weight": c.weight,
                               "effect": c.effect} for c in im.clusters],
                )
                records.append(ImageRecord(im.id, meta, maps, old.display_image(im)))
            write_shard(dst / SHARD_DIR, f"u{start // shard_size:05d}", records, encoding=encoding,  # type: ignore[arg-type]
                        display_size=display_size)
        header = {"model": old.model, "target": old.target, "class_names": old.class_names, "params": old.params,
                  "method": old.method, "created": old.created,
                  "storage": {"shards": SHARD_DIR, "encoding": encoding, "display_size": int(display_size),
                              "images_per_shard": int(shard_size)},
                  "dataset": {"upgraded_from": old.upgraded_from or old.version, "source": str(src)}}
        return write_manifest(dst, header, order=[im.id for im in old.images])
