"""Face verification explained: detect and align both photos, explain the chip pair, warp the maps back.

``explain_faces(embedder, photo_a, photo_b)`` runs the face front end of
:mod:`featurelens.similarity.faces` on each photo (or takes 150×150 aligned chips as they are), a
pair method of :mod:`featurelens.similarity.pair` on the two chips, and warps each chip map onto its
original photo. The decision is "same person" when the Euclidean distance is below the threshold
(dlib's 0.6) or, for ``metric="cosine"``, when the cosine is above a given threshold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from featurelens.imaging import as_pil, overlay
from featurelens.similarity.embedding import Embedder
from featurelens.similarity.faces import Face, prepare_face, warp_to_photo
from featurelens.similarity.pair import ImageLike, PairExplanation, explain_pair

FACE_MODELS = {"dlib_face": 0.6}  # face embedders and their Euclidean same-person threshold


def is_face_model(embedder: Embedder) -> bool:
    return embedder.name in FACE_MODELS


def default_threshold(embedder: Embedder, metric: str) -> float | None:
    """dlib's 0.6 for the Euclidean distance of a face model; no default for cosine."""
    return FACE_MODELS.get(embedder.name) if metric == "euclidean" else None


def decide(score: float, metric: str, threshold: float | None) -> str | None:
    """``"same"``/``"different"``: distance < threshold, or cosine > threshold; None without a threshold."""
    if threshold is None:
        return None
    same = score < threshold if metric == "euclidean" else score > threshold
    return "same" if same else "different"


@dataclass
class FacePairResult:
    """A pair explanation on the chips plus each face and its map on the original photo."""

    explanation: PairExplanation
    face_a: Face
    face_b: Face
    photo_map_a: np.ndarray  # [H_a, W_a] in [0, 1], zero outside the chip
    photo_map_b: np.ndarray
    threshold: float | None

    @property
    def score(self) -> float:
        return float(self.explanation.score[0])

    @property
    def decision(self) -> str | None:
        return decide(self.score, self.explanation.metric, self.threshold)


def explain_faces(
    embedder: Embedder,
    photo_a: ImageLike,
    photo_b: ImageLike,
    *,
    method: str = "sfam",
    metric: str = "euclidean",
    rule: str | None = None,
    face_a: int | None = None,
    face_b: int | None = None,
    threshold: float | None = None,
    names: tuple[str, str] = ("image a", "image b"),
) -> FacePairResult:
    """Explain the face pair of two photos (see the module docstring); ``face_*`` pick a face (0 = largest)."""
    pa, pb = as_pil(photo_a), as_pil(photo_b)
    fa = prepare_face(pa, name=names[0], face=face_a)
    fb = prepare_face(pb, name=names[1], face=face_b)
    ex = explain_pair(embedder, fa.chip, fb.chip, method=method, metric=metric, rule=rule)
    thr = threshold if threshold is not None else default_threshold(embedder, metric)
    return FacePairResult(ex, fa, fb, warp_to_photo(ex.maps_a[0], fa), warp_to_photo(ex.maps_b[0], fb), thr)


def draw_box(image: Image.Image, box: tuple[int, int, int, int], width: int = 3) -> Image.Image:
    out = image.copy()
    ImageDraw.Draw(out).rectangle(box, outline=(255, 255, 255), width=width)
    return out


def photo_overlay(photo: ImageLike, photo_map: np.ndarray, face: Face) -> Image.Image:
    """The map over the photo (original size) with the face box drawn."""
    return draw_box(Image.fromarray(overlay(as_pil(photo), photo_map)), face.box)


def save_face_pair(result: FacePairResult, photo_a: ImageLike, photo_b: ImageLike, out_dir: str | Path,
                   *, names: tuple[str, str] = ("a", "b"), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write, per side, the overlay on the photo (original size), the photo map and the chip map (``.npy``)
    and the chip overlay; and ``manifest.json`` with the distance, the decision and both face boxes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex = result.explanation
    files: dict[str, Any] = {}
    for side, photo, name, face, pmap, cmap in (
        ("a", photo_a, names[0], result.face_a, result.photo_map_a, ex.maps_a[0]),
        ("b", photo_b, names[1], result.face_b, result.photo_map_b, ex.maps_b[0]),
    ):
        stem = f"{side}_{name}_{ex.method}"
        photo_overlay(photo, pmap, face).save(out / f"{stem}.png")
        np.save(out / f"{stem}.npy", pmap.astype(np.float32))
        chip_map = cmap.detach().float().cpu().numpy()
        np.save(out / f"{stem}_chip.npy", chip_map)
        Image.fromarray(overlay(face.chip, chip_map)).save(out / f"{stem}_chip.png")
        files[side] = {"image": name, "overlay": f"{stem}.png", "map": f"{stem}.npy", "chip_map": f"{stem}_chip.npy",
                       "chip_overlay": f"{stem}_chip.png", "size": list(face.photo_size), **face.to_dict()}
    key = "similarity" if ex.metric == "cosine" else "distance"
    manifest: dict[str, Any] = {
        "method": ex.method, "metric": ex.metric, key: result.score, "threshold": result.threshold,
        "decision": result.decision, "files": files, "top_channels": ex.top_channels(0, 10),
        "meta": {k: v for k, v in ex.meta.items() if isinstance(v, (str, int, float, bool))},
    }
    if ex.remainder is not None:
        manifest["remainder"] = float(ex.remainder[0])
    manifest.update(extra or {})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def face_chip_loader(path: Path) -> Image.Image:
    """Gallery loader for face models: the largest face's chip (raises NoFaceError naming the file)."""
    from featurelens.imaging import load_image

    return prepare_face(load_image(path), name=str(path)).chip
