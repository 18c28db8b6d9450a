"""Demo section: SFAM similarity maps on EfficientNet-Lite0 features and the trained shapes model.

Shows (1) a same-photo pair (two crops of the cat, one mirrored) and an unrelated pair under
EfficientNet-Lite0's pooled features with SFAM and the three baselines; (2) same-class pairs of
held-out animal shapes under the triplet-trained ``shapes_metric`` model, with the held-out Recall@1;
(3) retrieval of the top matches in a small gallery of photo crops, maps on both sides;
(4) few-shot: a shape query against class prototypes (mean of 5 support embeddings); (5) face
verification with dlib's face ResNet on real photos: two same-person pairs and one different-person
pair, the distance, the decision at 0.6 and the SFAM maps warped back onto both photos.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from featurelens.demo import DemoContext, DemoSection
from featurelens.imaging import overlay
from featurelens.report.html import Raw, escape, figure, gallery, table

SUBDIR = "similarity"


def _ov(image: Image.Image | np.ndarray, m: torch.Tensor, size: int = 160) -> Image.Image:
    pil = Image.fromarray(np.asarray(image)).convert("RGB").resize((size, size), Image.NEAREST if np.asarray(image).shape[0] < 64 else Image.BILINEAR)
    return Image.fromarray(overlay(pil, m.detach().cpu().numpy()))


def section(ctx: DemoContext) -> DemoSection:
    from featurelens.models.metric_shapes import SHAPES_CLASSES, load_shapes_dataset, split_indices, to_tensor
    from featurelens.similarity.embedding import _lite0, load_embedder
    from featurelens.similarity.pair import PAIR_METHODS, explain_pair
    from featurelens.similarity.retrieval import explain_retrieval, few_shot, index_gallery

    out = ctx.out_dir / SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    summary: dict[str, Any] = {}
    parts: list[str] = []

    # 1. photos on EfficientNet-Lite0 features
    lite0 = _lite0(ctx.spec())
    photos = ctx.photos()
    cat = photos["chelsea"]
    a_imgs = [cat.crop((0, 0, 380, 300)), photos["coffee"]]
    b_imgs = [ImageOps.mirror(cat.crop((60, 20, 451, 300))), photos["rocket"]]
    ctx.log("  similarity: photo pairs on EfficientNet-Lite0")
    rows = []
    for method in PAIR_METHODS:
        ex = explain_pair(lite0, a_imgs, b_imgs, method, "cosine")
        for i in range(2):
            va, vb = lite0.model_view(a_imgs[i]), lite0.model_view(b_imgs[i])
            cells = [figure(_ov(va, ex.maps_a[i]), "a", max_size=160, fmt="jpeg"), figure(_ov(vb, ex.maps_b[i]), "b", max_size=160, fmt="jpeg")]
            rows.append([method, "same photo (crops)" if i == 0 else "unrelated", f"{float(ex.score[i]):.3f}", Raw("".join(cells))])
            if method == "sfam":
                summary[f"lite0_cosine_{'same' if i == 0 else 'unrelated'}"] = float(ex.score[i])
                summary[f"lite0_cis_sum_{'same' if i == 0 else 'unrelated'}"] = float(ex.cis[i].sum())
    parts.append("<h3>EfficientNet-Lite0 pooled features (1280-d), cosine</h3>")
    parts.append(f'<p class="note">SFAM CIS sum to the cosine: {summary["lite0_cis_sum_same"]:.4f} vs '
                 f'{summary["lite0_cosine_same"]:.4f} (same photo).</p>')
    parts.append(table(rows, ["method", "pair", "cosine", "maps (a, b)"]))

    # 2. shapes model
    ctx.log("  similarity: animal shapes (shapes_metric)")
    shapes = load_embedder("shapes_metric")
    x, y = load_shapes_dataset()
    _, te = split_indices(len(y), 0.2, seed=0)
    x, y = x[te], y[te]
    e = shapes.embed(to_tensor(x[:1000]))
    sim = e @ e.T
    sim.fill_diagonal_(-2)
    r1 = float((torch.from_numpy(y[:1000])[sim.argmax(1)] == torch.from_numpy(y[:1000])).float().mean())
    summary["shapes_recall_at_1_1000_held_out"] = r1
    classes = [0, 3, 6, 9] if not ctx.quick else [0, 6]
    ia = [int(np.flatnonzero(y == c)[0]) for c in classes]
    ib = [int(np.flatnonzero(y == c)[1]) for c in classes]
    ex = explain_pair(shapes, to_tensor(x[ia]), to_tensor(x[ib]), "sfam", "cosine")
    figs = []
    for j, c in enumerate(classes):
        figs.append(figure(_ov(x[ia[j]], ex.maps_a[j]), f"{SHAPES_CLASSES[c]} a", max_size=160))
        figs.append(figure(_ov(x[ib[j]], ex.maps_b[j]), f"{SHAPES_CLASSES[c]} b · cos {float(ex.score[j]):.3f}", max_size=160))
    parts.append("<h3>Triplet-trained shapes model (animal-shape-mnist), same-class pairs</h3>")
    parts.append(f'<p class="note">Leave-one-out Recall@1 on 1,000 held-out images: {r1:.3f}.</p>')
    parts.append(gallery(figs, cell=170))

    # 3. retrieval over a small gallery of photo crops
    ctx.log("  similarity: retrieval")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        for name, im in photos.items():
            w, h = im.size
            for j in range(1 if ctx.quick else 2):
                s = rng.uniform(0.6, 0.9)
                x0, y0 = int(rng.integers(0, int(w * (1 - s)) + 1)), int(rng.integers(0, int(h * (1 - s)) + 1))
                im.crop((x0, y0, x0 + int(w * s), y0 + int(h * s))).save(Path(d) / f"{name}_{j}.jpg")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idx = index_gallery(lite0, d, use_cache=False)
        query = ImageOps.mirror(cat)
        res = explain_retrieval(lite0, query, idx, top_k=3)
        hit_figs = [figure(lite0.model_view(query), "query", max_size=160, fmt="jpeg")]
        for h in res.hits:
            hit_figs.append(figure(_ov(lite0.model_view(query), h.map_query), f"#{h.rank} query map", max_size=160, fmt="jpeg"))
            hit_figs.append(figure(_ov(lite0.model_view(Image.open(h.path)), h.map_hit), f"#{h.rank} {h.path.name} · {h.score:.3f}", max_size=160, fmt="jpeg"))
    summary["retrieval_top1"] = res.hits[0].path.name
    parts.append(f"<h3>Retrieval: mirrored cat photo vs {len(idx.paths)} photo crops (top 3)</h3>")
    parts.append(gallery(hit_figs, cell=170))

    # 4. few-shot
    ctx.log("  similarity: few-shot")
    supports = {SHAPES_CLASSES[c]: to_tensor(x[np.flatnonzero(y == c)[2:7]]) for c in range(10)}
    qi = int(np.flatnonzero(y == 5)[0])
    pred, scores, pex = few_shot(shapes, to_tensor(x[qi : qi + 1]), supports)
    summary["few_shot_prediction"] = pred
    sup = x[np.flatnonzero(y == SHAPES_CLASSES.index(pred))[2:7]]
    figs = [figure(_ov(x[qi], pex.map_query), f"query ({SHAPES_CLASSES[5]}) → {pred}", max_size=160)]
    figs += [figure(_ov(sup[j], pex.maps_support[j]), f"support {j + 1}", max_size=160) for j in range(len(sup))]
    best = sorted(scores.items(), key=lambda kv: -kv[1])[:3]
    parts.append("<h3>Few-shot: query vs class prototypes (5 supports per class)</h3>")
    parts.append(f'<p class="note">Top prototypes: {escape(", ".join(f"{k} {v:.3f}" for k, v in best))}</p>')
    parts.append(gallery(figs, cell=170))

    # 5. face verification (needs dlib-bin: featurelens[faces])
    parts.append(_faces_part(ctx, out, files, summary))

    (out / "summary.txt").write_text("\n".join(f"{k}: {v}" for k, v in summary.items()) + "\n", encoding="utf-8")
    files.append(f"{SUBDIR}/summary.txt")
    html = ('<p>SFAM (Liao et al. 2025) explains an embedding model\'s similarity: channel scores (CIS) from the two '
            "embeddings, combined with each image's feature maps. One forward of the pair, no backward.</p>" + "".join(parts))
    return DemoSection("Similarity (SFAM)", html, files, summary)


FACE_PAIRS = (("obama", "obama2"), ("obama", "obama3"), ("obama", "biden"))


def _faces_part(ctx: DemoContext, out: Path, files: list[str], summary: dict[str, Any]) -> str:
    """Face verification on the shipped photos: distance, decision, SFAM maps on both photos."""
    from featurelens.errors import FeaturelensError

    try:
        from featurelens.similarity.embedding import load_embedder
        from featurelens.similarity.face_pair import decide, photo_overlay
        from featurelens.similarity.faces import face_photo, prepare_face, warp_to_photo
        from featurelens.similarity.pair import explain_pair

        emb = load_embedder("dlib_face")
        ctx.log("  similarity: face verification (dlib_face)")
        photos = {n: Image.open(face_photo(n)).convert("RGB") for n in ("obama", "obama2", "obama3", "biden")}
        faces = {n: prepare_face(im, name=n) for n, im in photos.items()}
    except FeaturelensError as exc:  # dlib-bin or the face model not installed
        return f'<h3>Face verification</h3><p class="note">skipped: {escape(str(exc))}</p>'
    ex = explain_pair(emb, [faces[a].chip for a, _ in FACE_PAIRS], [faces[b].chip for _, b in FACE_PAIRS], "sfam", "euclidean")
    rows = []
    for i, (a, b) in enumerate(FACE_PAIRS):
        d = float(ex.score[i])
        verdict = decide(d, "euclidean", 0.6)
        summary[f"face_distance_{a}_{b}"] = round(d, 4)
        summary[f"face_decision_{a}_{b}"] = verdict
        cells = []
        for side, name, m in (("a", a, ex.maps_a[i]), ("b", b, ex.maps_b[i])):
            ov = photo_overlay(photos[name], warp_to_photo(m, faces[name]), faces[name])
            fname = f"{SUBDIR}/face_{i}_{side}_{name}.jpg"
            ov.convert("RGB").save(ctx.out_dir / fname, quality=85)
            files.append(fname)
            cells.append(figure(ov, name, max_size=220, fmt="jpeg"))
        rows.append([f"{a} – {b}", f"{d:.3f}", "same person" if verdict == "same" else "different", Raw("".join(cells))])
    return ("<h3>Face verification: dlib's face ResNet (real photos), Euclidean distance</h3>"
            f'<p class="note">Rebuilt in PyTorch from dlib\'s model file; same person when the distance is below 0.6. '
            f"SFAM rule: {escape(str(ex.meta.get('rule')))}; maps computed on the aligned 150-px chips (feature layer "
            "stage5, 2×2) and warped back onto each photo; the white box is the detected face.</p>"
            + table(rows, ["pair", "distance", "decision", "SFAM maps (a, b)"]))
