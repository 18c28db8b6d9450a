"""Compact shard storage for network explanations of many images.

One batch of images becomes one **shard**: ``<key>.npz`` holding, per image, its display image once
(JPEG bytes, longest side at most ``display_size``) and its maps at feature resolution, plus
``<key>.json``, the shard's index (image ids, per-image metadata, and where each array is). Both files
are written atomically (a temporary file, then ``os.replace``), the index last: a shard without an
index is incomplete and ignored, so a run killed at any moment leaves only complete shards behind.

Map encodings (each 2-D map ``m`` of an array ``[..., h, w]`` separately):

* ``"float16"``: ``q = float16(m / s)`` with ``s = 2**ceil(log2(max|m|))`` (a power of two, so the
  division is exact and ``q * s`` equals ``float16(m)`` wherever ``m`` is in float16's normal range,
  while values beyond float16's range survive): relative error ≤ 2⁻¹¹;
* ``"uint8"``: ``q = round((m - lo) / (hi - lo) * 255)`` with ``lo, hi = min m, max m``, decoded as
  ``lo + q / 255 * (hi - lo)``: absolute error ≤ ``(hi - lo) / 510``.

:class:`ShardStore` reads shards back, lists the ids already stored (for ``--resume``), and
:func:`validate_shards` checks every shard against its index (sizes, checksums, array shapes and
dtypes, duplicate ids, incomplete shards).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from featurelens.errors import BundleError
from featurelens.imaging import as_pil

SHARD_FORMAT = "featurelens-shard"
SHARD_VERSION = 1
Encoding = Literal["float16", "uint8"]
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class ImageRecord:
    """What a shard keeps of one image: JSON-able ``meta``, float ``maps`` (name → ``[..., h, w]``),
    and the display image (a PIL image or array, encoded on write; JPEG bytes when read back)."""

    image_id: str
    meta: dict[str, Any] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    image: Image.Image | np.ndarray | bytes | None = None

    def display_image(self) -> Image.Image | None:
        """The stored display image as RGB PIL."""
        if self.image is None:
            return None
        if isinstance(self.image, bytes):
            return Image.open(io.BytesIO(self.image)).convert("RGB")
        return as_pil(self.image)


def encode_display_image(image: Image.Image | np.ndarray, display_size: int = 256, quality: int = 88) -> bytes:
    """JPEG bytes of ``image`` with its longest side shrunk to at most ``display_size`` (never enlarged)."""
    pil = as_pil(image)
    w, h = pil.size
    scale = display_size / max(w, h)
    if scale < 1:
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# map encodings
# ---------------------------------------------------------------------------
def _as_maps(m: np.ndarray) -> np.ndarray:
    a = np.asarray(m, dtype=np.float32)
    if a.ndim < 2:
        raise BundleError(f"a map must have at least 2 dimensions [..., h, w], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise BundleError("a map holds NaN or infinite values")
    return a


def encode_map(m: np.ndarray, encoding: Encoding = "float16") -> dict[str, np.ndarray]:
    """The arrays that store ``m`` (see the module docstring): ``{"q": ..., "scale": ...}`` for float16,
    ``{"q": ..., "lo": ..., "hi": ...}`` for uint8; the extra arrays have shape ``m.shape[:-2]``."""
    a = _as_maps(m)
    if encoding == "float16":
        peak = np.abs(a).max(axis=(-2, -1))
        exp = np.ceil(np.log2(np.where(peak > 0, peak, 1.0)))
        scale = np.exp2(exp).astype(np.float32)
        return {"q": (a / scale[..., None, None]).astype(np.float16), "scale": scale}
    if encoding == "uint8":
        lo = a.min(axis=(-2, -1))
        hi = a.max(axis=(-2, -1))
        span = np.where(hi > lo, hi - lo, 1.0)[..., None, None]
        q = np.rint((a - lo[..., None, None]) / span * 255.0)
        return {"q": np.clip(q, 0, 255).astype(np.uint8), "lo": lo.astype(np.float32), "hi": hi.astype(np.float32)}
    raise BundleError(f"unknown map encoding {encoding!r}; use float16 or uint8")


def decode_map(parts: Mapping[str, np.ndarray], encoding: Encoding) -> np.ndarray:
    """The float32 map back from :func:`encode_map`'s arrays."""
    q = parts["q"]
    if encoding == "float16":
        return q.astype(np.float32) * np.asarray(parts["scale"], np.float32)[..., None, None]
    if encoding == "uint8":
        lo = np.asarray(parts["lo"], np.float32)[..., None, None]
        hi = np.asarray(parts["hi"], np.float32)[..., None, None]
        return lo + q.astype(np.float32) / np.float32(255.0) * (hi - lo)
    raise BundleError(f"unknown map encoding {encoding!r}")


_PARTS = {"float16": {"q": np.float16, "scale": np.float32}, "uint8": {"q": np.uint8, "lo": np.float32, "hi": np.float32}}


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class ShardInfo:
    key: str
    ids: tuple[str, ...]
    npz_bytes: int
    index_bytes: int


def encode_shard(key: str, records: Sequence[ImageRecord], *, encoding: Encoding = "float16",
                 display_size: int = 256, quality: int = 88) -> tuple[bytes, bytes]:
    """The bytes of shard ``key``: ``(npz, index JSON)``; :func:`write_encoded` puts them on disk.

    Encoding and writing are apart so that a worker on another machine can encode its shard and hand
    the bytes to the driver when the bundle folder is not on shared storage.
    """
    if not _KEY.match(key):
        raise BundleError(f"shard key {key!r} must be 1-64 letters, digits, '_' or '-'")
    if encoding not in _PARTS:
        raise BundleError(f"unknown map encoding {encoding!r}; use float16 or uint8")
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        raise BundleError(f"shard {key}: an image id is given twice")
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for n, rec in enumerate(records):
        entry: dict[str, Any] = {"id": rec.image_id, "meta": rec.meta, "maps": {}}
        if rec.image is not None:
            data = rec.image if isinstance(rec.image, bytes) else encode_display_image(rec.image, display_size, quality)
            with Image.open(io.BytesIO(data)) as im:
                size = list(im.size)
            arrays[f"i{n}"] = np.frombuffer(data, dtype=np.uint8)
            entry["image"] = {"key": f"i{n}", "format": "jpeg", "size": size}
        for j, (name, m) in enumerate(rec.maps.items()):
            parts = encode_map(m, encoding)
            base = f"m{n}_{j}"
            for part, arr in parts.items():
                arrays[f"{base}_{part}"] = arr
            entry["maps"][name] = {"key": base, "shape": list(parts["q"].shape)}
        entries.append(entry)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    npz = buf.getvalue()
    index = {
        "format": SHARD_FORMAT, "version": SHARD_VERSION, "key": key, "encoding": encoding,
        "npz": f"{key}.npz", "npz_bytes": len(npz), "npz_sha256": hashlib.sha256(npz).hexdigest(),
        "images": entries,
    }
    return npz, json.dumps(index, separators=(",", ":"), allow_nan=False).encode("utf-8")


def write_encoded(root: str | Path, key: str, npz: bytes, index: bytes) -> ShardInfo:
    """Put an encoded shard on disk: ``<key>.npz`` then ``<key>.json``, each atomically, the index last."""
    if not _KEY.match(key):
        raise BundleError(f"shard key {key!r} must be 1-64 letters, digits, '_' or '-'")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = tuple(e["id"] for e in json.loads(index)["images"])
    _atomic_write(root / f"{key}.npz", npz)
    _atomic_write(root / f"{key}.json", index)  # last: the shard exists once its index does
    return ShardInfo(key, ids, len(npz), len(index))


def write_shard(root: str | Path, key: str, records: Sequence[ImageRecord], *, encoding: Encoding = "float16",
                display_size: int = 256, quality: int = 88) -> ShardInfo:
    """Encode ``records`` and write them as shard ``key`` under ``root`` (see :func:`encode_shard`).

    Writing the same key again replaces the shard whole, so a retried batch is never stored twice.
    """
    npz, index = encode_shard(key, records, encoding=encoding, display_size=display_size, quality=quality)
    return write_encoded(root, key, npz, index)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
def _read_index(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path.name}: unreadable shard index ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
        raise BundleError(f"{path.name}: not a featurelens shard index")
    if data.get("version") != SHARD_VERSION:
        raise BundleError(f"{path.name}: shard version {data.get('version')!r}, this featurelens reads {SHARD_VERSION}")
    return data


class ShardStore:
    """The shards of one folder: which ids are stored where, and their records."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._where: dict[str, str] | None = None
        self._indexes: dict[str, dict[str, Any]] = {}

    def keys(self) -> list[str]:
        """Keys of complete shards (those with an index), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if not p.name.startswith("."))

    def index(self, key: str) -> dict[str, Any]:
        if key not in self._indexes:
            self._indexes[key] = _read_index(self.root / f"{key}.json")
        return self._indexes[key]

    def _locations(self) -> dict[str, str]:
        if self._where is None:
            where: dict[str, str] = {}
            for key in self.keys():
                for e in self.index(key)["images"]:
                    if e["id"] in where:
                        raise BundleError(f"image {e['id']!r} is in shards {where[e['id']]} and {key}")
                    where[e["id"]] = key
            self._where = where
        return self._where

    def done_ids(self) -> set[str]:
        """The ids stored in complete shards: what ``--resume`` skips."""
        return set(self._locations())

    def refresh(self) -> None:
        self._where = None
        self._indexes.clear()

    def read_shard(self, key: str) -> list[ImageRecord]:
        """Every record of one shard, maps decoded to float32, images as JPEG bytes."""
        idx = self.index(key)
        enc = idx["encoding"]
        with np.load(self.root / idx["npz"], allow_pickle=False) as z:
            out = []
            for e in idx["images"]:
                maps = {name: decode_map({p: z[f"{spec['key']}_{p}"] for p in _PARTS[enc]}, enc)
                        for name, spec in e["maps"].items()}
                image = z[e["image"]["key"]].tobytes() if "image" in e else None
                out.append(ImageRecord(e["id"], e["meta"], maps, image))
        return out

    def read(self, image_id: str) -> ImageRecord:
        """One image's record."""
        key = self._locations().get(image_id)
        if key is None:
            raise BundleError(f"no image {image_id!r} in the shards of {self.root}")
        return next(r for r in self.read_shard(key) if r.image_id == image_id)

    def __iter__(self) -> Iterator[ImageRecord]:
        for key in self.keys():
            yield from self.read_shard(key)

    def incomplete(self) -> list[Path]:
        """Files a killed run may leave: temporary files and ``.npz`` without an index."""
        if not self.root.is_dir():
            return []
        tmp = [p for p in self.root.glob(".*.tmp")]
        orphan = [p for p in self.root.glob("*.npz") if not (self.root / f"{p.stem}.json").exists()]
        return sorted(tmp + orphan)

    def remove_incomplete(self) -> list[Path]:
        """Delete :meth:`incomplete` files (before resuming); returns what was removed."""
        gone = self.incomplete()
        for p in gone:
            p.unlink(missing_ok=True)
        return gone


def validate_shards(root: str | Path, *, check_images: bool = True) -> list[str]:
    """Problems found in the shards under ``root`` (empty: all valid). Checks each index (format,
    version, key = file name), its ``.npz`` (present, byte size, SHA-256), that the arrays in the
    ``.npz`` are exactly those the index names with the stated shapes and dtypes, that display images
    decode, that every id is stored once, and reports incomplete shards."""
    store = ShardStore(root)
    problems: list[str] = []
    owner: dict[str, str] = {}
    for key in store.keys():
        try:
            idx = store.index(key)
        except BundleError as exc:
            problems.append(str(exc))
            continue
        name = f"{key}.json"
        if idx.get("key") != key or idx.get("npz") != f"{key}.npz":
            problems.append(f"{name}: the index names shard {idx.get('key')!r} / {idx.get('npz')!r}")
            continue
        enc = idx.get("encoding")
        if enc not in _PARTS:
            problems.append(f"{name}: unknown map encoding {enc!r}")
            continue
        npz_path = store.root / idx["npz"]
        if not npz_path.is_file():
            problems.append(f"{name}: {idx['npz']} is missing")
            continue
        data = npz_path.read_bytes()
        if len(data) != idx.get("npz_bytes") or hashlib.sha256(data).hexdigest() != idx.get("npz_sha256"):
            problems.append(f"{idx['npz']}: size or checksum differs from its index (changed or truncated)")
            continue
        expected: dict[str, tuple[tuple[int, ...], Any]] = {}
        for e in idx.get("images", []):
            iid = e.get("id")
            if not isinstance(iid, str) or not isinstance(e.get("meta"), dict):
                problems.append(f"{name}: an image entry without a string id or a meta object")
                continue
            if iid in owner:
                problems.append(f"image {iid!r} is stored twice (shards {owner[iid]} and {key})")
            owner[iid] = key
            if "image" in e:
                expected[e["image"]["key"]] = (None, np.uint8)  # type: ignore[assignment]
            for mname, spec in e.get("maps", {}).items():
                shape = tuple(spec["shape"])
                if len(shape) < 2:
                    problems.append(f"{name}: map {mname!r} of {iid!r} has shape {list(shape)}")
                for part, dtype in _PARTS[enc].items():
                    expected[f"{spec['key']}_{part}"] = (shape if part == "q" else shape[:-2], dtype)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                present = set(z.files)
                for k in sorted(set(expected) - present):
                    problems.append(f"{idx['npz']}: array {k} named by the index is missing")
                for k in sorted(present - set(expected)):
                    problems.append(f"{idx['npz']}: array {k} is not in the index")
                for k in sorted(set(expected) & present):
                    arr = z[k]
                    shape, dtype = expected[k]
                    if arr.dtype != np.dtype(dtype) or (shape is not None and arr.shape != shape):
                        problems.append(f"{idx['npz']}: array {k} is {arr.dtype}{list(arr.shape)}, the index says "
                                        f"{np.dtype(dtype)}{list(shape) if shape is not None else ''}")
                    elif shape is None and check_images:
                        try:
                            with Image.open(io.BytesIO(arr.tobytes())) as im:
                                im.load()
                        except Exception as exc:  # any decoder failure is a bad shard
                            problems.append(f"{idx['npz']}: image {k} does not decode ({exc})")
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            problems.append(f"{idx['npz']}: unreadable ({exc})")
    for p in store.incomplete():
        problems.append(f"{p.name}: incomplete shard left by an interrupted run (remove it or resume)")
    return problems
