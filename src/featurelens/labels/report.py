"""Self-contained HTML report of labelled network explanations, plus PNG figures.

``write_report(bundle, processed, out)`` writes ``out/index.html`` (all images embedded as data URIs, so the
file stands alone) and ``out/figures/*.png``:

- ``image_<id>.png``: per image, one row per layer, the (merged) clusters over the image with their labels;
- ``class_<name>_global.png``: per class, the global grid (layers × top labels, up to 3 example overlays);
- ``class_<name>_trends.png``: per class, each concept's mean score per layer (or its share, legacy).

Per image and layer the page shows the merged regions with their top 3 labels, the *full-merge* view (all
clusters of the layer merged, top 6 labels, ``div.full-merge``), and under every labelled cluster map its
game-statistics line (``div.game-stats``: rounds, correct, wrong, gave up, mean revealed %) and the raw
text of every label it received, folded away (``details.raw-labels``). Everything the pipeline dropped or
could not use is listed with its count at the top of the page.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from featurelens.labels.explain import (
    LocalExplanation,
    concept_trends,
    global_explanations,
    local_explanations,
)
from featurelens.labels.pipeline import ProcessedLabel, ProcessedLabels
from featurelens.network.bundle import Bundle, safe_name

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}
h1,h2,h3{font-weight:600} table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 6px;
font-size:90%;vertical-align:top} th{background:#f3f3f3} img.fig{max-width:100%;border:1px solid #ddd}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.4em .8em} .muted{color:#777}
img.thumb{width:96px;height:96px;object-fit:cover;margin:1px}
.full-merge{display:flex;gap:.8em;align-items:center;margin:.3em 0;padding:.3em;background:#f7f7fb}
.game-stats{font-size:85%;color:#555}
"""

_CSS_EXTRA = """img.fig{max-width:100%;border:1px solid #ddd} .warn{background:#fff4e0;border-left:4px solid #e69500;
padding:.4em .8em} .muted{color:#777} td,th{vertical-align:top}
img.thumb{width:112px;height:112px;object-fit:cover;margin:1px}
.full-merge{display:flex;gap:.8em;align-items:center;margin:.3em 0;padding:.3em;background:#f7f7fb}
.game-stats{font-size:85%;color:#555}"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _rgb(bundle: Bundle, image_id: str) -> np.ndarray:
    from featurelens.network.render import load_photo

    return load_photo(bundle, bundle.image(image_id))


def _label_text(labels: list[tuple[str, float]], n: int = 3) -> str:
    return ", ".join(f"{r} ({s:.1f})" for r, s in labels[:n]) if labels else "(no labels)"


def image_figure(bundle: Bundle, locals_: list[LocalExplanation], alpha: float = 0.5) -> bytes:
    """Rows = layers, columns = the layer's (merged) clusters, each over the image with its labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from featurelens.imaging import overlay

    rgb = _rgb(bundle, locals_[0].image_id)
    ncol = max(len(le.clusters) for le in locals_)
    fig, axes = plt.subplots(len(locals_), ncol, figsize=(2.3 * ncol, 2.5 * len(locals_)), squeeze=False)
    for r, le in enumerate(locals_):
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(le.clusters):
                continue
            region = le.clusters[c]
            ax.imshow(overlay(rgb, region.image_map(bundle, rgb.shape[:2]), alpha=alpha))
            merged = f" ×{len(region.cluster_ids)}" if region.merged else ""
            ax.set_title(f"{_label_text(region.labels, 2)}\nw={region.weight:.1f}%{merged}", fontsize=7)
            if c == 0:
                _row_label(ax, le.layer, -0.05)
    fig.suptitle(f"{locals_[0].image_id} ({locals_[0].class_name}): clusters per layer", fontsize=9)
    return _fig_png(fig)


def _row_label(ax: object, text: str, x: float) -> None:
    """A layer name written vertically left of a figure row."""
    ax.text(x, 0.5, text, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=8)  # type: ignore[attr-defined]


def _examples_strip(bundle: Bundle, cluster_ids: list[str], n: int, size: int = 96) -> np.ndarray:
    from PIL import Image

    from featurelens.network.render import render_cluster

    tiles = []
    for cid in cluster_ids[:n]:
        _, ov = render_cluster(bundle, bundle.cluster(cid), _rgb(bundle, cid.split("/", 1)[0]))
        tiles.append(np.asarray(Image.fromarray(ov).resize((size, size))))
    while len(tiles) < n:
        tiles.append(np.full((size, size, 3), 255, dtype=np.uint8))
    return np.concatenate(tiles, axis=1)


def global_figure(bundle: Bundle, class_name: str, per_layer: list, top: int, examples: int) -> bytes:
    """Rows = layers, columns = top labels; each cell shows up to ``examples`` overlays from different images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(per_layer), top, figsize=(2.6 * top, 1.5 * len(per_layer) + 0.4), squeeze=False
    )
    for r, g in enumerate(per_layer):
        for c in range(top):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(g.labels):
                continue
            lab = g.labels[c]
            ax.imshow(_examples_strip(bundle, lab.examples, examples))
            ax.set_title(f"{lab.representative}: S={lab.score:.1f}, w̄={lab.mean_weight:.0f}%", fontsize=7)
            if c == 0:
                _row_label(ax, g.layer, -0.03)
    fig.suptitle(f"{class_name}: top labels per layer (summed score S, mean cluster weight w̄)", fontsize=9)
    return _fig_png(fig)


def trend_figure(class_name: str, layers: list[str], trends: list, rule: str = "mean-score") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(layers))
    for t in trends:
        y = np.array([np.nan if v is None else v for v in t.values], dtype=float)
        name = t.representative if rule == "mean-score" else f"{t.representative} ({t.direction}, slope {t.slope:+.2f})"
        ax.plot(x, y, marker="o", label=name)
    ax.set_xticks(x, layers, rotation=20, fontsize=8)
    ax.set_ylabel("mean label score" if rule == "mean-score" else "share of layer's label score")
    ax.set_xlabel("layer (shallow → deep)")
    ax.set_title(f"{class_name}: concepts across layers", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _fig_png(fig)


def _counts_html(processed: ProcessedLabels) -> str:
    c = processed.counts
    rows = [
        ("label rows in the export", c.get("rows")),
        ("used", c.get("kept")),
        ("dropped: empty after normalisation", c.get("empty")),
        ("not used: unknown image", c.get("unknown_image")),
        ("not used: unknown cluster", c.get("unknown_cluster")),
        ("dropped: no class", c.get("no_class")),
        ("clusters labelled / in bundle", f"{c.get('clusters_labelled')} / {c.get('clusters_total')}"),
        ("grouping classes", c.get("grouping_classes", c.get("classes"))),
        ("groups (concepts)", c.get("groups")),
    ]
    out = "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"
    if processed.problems:
        out += '<div class="warn"><b>Problems</b><ul>' + "".join(
            f"<li>{esc(p)}</li>" for p in processed.problems
        )
        out += "</ul></div>"
    return out


def report_html(
    bundle: Bundle,
    processed: ProcessedLabels,
    figures: dict[str, bytes],
    title: str = "Labelled network explanations",
    fragment: bool = False,
) -> str:
    """The report as HTML (a full page, or a fragment for the demo). ``figures``: name -> PNG bytes."""
    p = processed.params
    sections: list[tuple[str, str]] = []
    parts: list[str] = []
    parts.append(
        f"<p>Bundle <code>{esc(bundle.root.name)}</code> ({esc(bundle.model.get('name'))}), "
        f"{len(bundle.images)} image(s), layers {esc(', '.join(layer.name for layer in bundle.layers))}; "
        f"labels embedded with <code>{esc(processed.model)}</code>. Score = frequency × (1 − "
        f"{p.score.step_penalty} × mean reveal step), ÷ {p.score.wrong_divisor} when no giver guessed right "
        f"(a player who had seen the photo before never counts as right). Labels grouped by "
        f"<b>{esc(p.group_by)}</b> class; clusters merged: {esc(p.merge)}, merged score {esc(p.merged_score)}; "
        f"global labels from {esc(p.global_from)}; trends: {esc(p.trend)}.</p>"
    )
    parts.append(_counts_html(processed))
    sections.append(("Labels used and dropped", "\n".join(parts)))
    parts = []
    glob = global_explanations(bundle, processed)
    for class_name in sorted({im.true_class or im.predicted_class for im in bundle.images} | set(glob)):
        parts.append(f"<h3>{esc(class_name)}</h3>")
        if class_name not in glob:
            parts.append(f'<p class="warn">No labels for class {esc(class_name)}: no explanation.</p>')
            continue
        key = safe_name(class_name)
        parts.append(
            f'<img class="fig" alt="global grid {esc(class_name)}" src="{_data_uri(figures[f"class_{key}_global"])}">'
        )
        parts.append(
            f'<img class="fig" alt="trends {esc(class_name)}" src="{_data_uri(figures[f"class_{key}_trends"])}">'
        )
        parts.append(
            "<table><tr><th>layer</th><th>rank</th><th>label</th><th>summed score</th>"
            "<th>mean cluster weight</th><th>clusters</th><th>examples</th></tr>"
        )
        for g in glob[class_name]:
            for i, lab in enumerate(g.labels, 1):
                parts.append(
                    f"<tr><td>{esc(g.layer)}</td><td>{i}</td><td><b>{esc(lab.representative)}</b></td>"
                    f"<td>{lab.score:.2f}</td><td>{lab.mean_weight:.1f}%</td><td>{lab.clusters}</td>"
                    f"<td>{esc(', '.join(lab.examples))}</td></tr>"
                )
        parts.append("</table>")
        used = {(x.group_class, x.representative) for x in processed.labels if x.class_name == class_name}
        groups = [g for g in processed.groups if (g.class_name, g.representative) in used]
        parts.append(
            "<details><summary>label groups (by grouping class)</summary><table><tr><th>grouping class</th>"
            "<th>representative</th><th>labels (count)</th><th>raw texts</th></tr>"
        )
        for g in groups:
            raw = sorted(
                {
                    x.raw_label
                    for x in processed.labels
                    if x.group_class == g.class_name and x.representative == g.representative
                }
            )
            parts.append(
                f"<tr><td>{esc(g.class_name)}</td><td>{esc(g.representative)}</td><td>"
                f"{esc('; '.join(f'{t} ({n})' for t, n in g.labels.items()))}</td><td>"
                f"<details class='raw-labels'><summary>{len(raw)} raw text(s)</summary>"
                f"{esc(' | '.join(raw))}</details></td></tr>"
            )
        parts.append("</table></details>")
    sections.append(("Global explanations per class", "\n".join(parts)))
    parts = []
    by_image: dict[str, list[LocalExplanation]] = {}
    for le in local_explanations(bundle, processed):
        by_image.setdefault(le.image_id, []).append(le)
    for image_id, les in by_image.items():
        parts.append(f"<h3>{esc(image_id)} <span class='muted'>({esc(les[0].class_name)})</span></h3>")
        key = f"image_{safe_name(image_id)}"
        if key in figures:
            parts.append(
                f'<img class="fig" alt="clusters of {esc(image_id)}" src="{_data_uri(figures[key])}">'
            )
        for le in les:
            parts.append(_local_html(bundle, processed, le))
    sections.append(("Local explanations per image", "\n".join(parts)))
    if fragment:
        return "\n".join(f"<h3>{esc(t)}</h3>\n{b}" for t, b in sections)
    try:
        from featurelens.report.html import page
    except ImportError:  # the shared builder is optional; fall back to a minimal page
        body = "\n".join(f"<h2>{esc(t)}</h2>\n{b}" for t, b in sections)
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>"
        )
    style = f"<style>{_CSS_EXTRA}</style>"
    return page(
        title,
        [(t, (style if i == 0 else "") + b) for i, (t, b) in enumerate(sections)],
        subtitle="crowd labels → Sentence-BERT groups → scores → local and global explanations",
    )


def _local_html(bundle: Bundle, processed: ProcessedLabels, le: LocalExplanation) -> str:
    """One image-layer block: the full-merge view, then the regions with stats lines and raw labels."""
    p = processed.params
    out = [f"<h4>{esc(le.layer)}</h4>"]
    if le.full_merge is not None:
        fm = le.full_merge
        out.append(
            f'<div class="full-merge" data-image="{esc(le.image_id)}" data-layer="{esc(le.layer)}">'
            f'<img class="thumb" alt="full merge {esc(le.image_id)} {esc(le.layer)}" '
            f'src="{_overlay_uri(bundle, le.image_id, fm.image_map(bundle))}">'
            f"<div><b>full merge</b> of {len(fm.cluster_ids)} clusters (w = {fm.weight:.1f}%): "
            f"{esc(_label_text(fm.labels, p.top_labels_full_merge))}</div></div>"
        )
    raw: dict[str, list[ProcessedLabel]] = {}
    for x in processed.labels:
        if x.image_id == le.image_id and x.layer == le.layer:
            raw.setdefault(x.cluster_id, []).append(x)
    out.append("<table><tr><th>clusters</th><th>weight</th><th>labels (score)</th><th>cluster maps</th></tr>")
    for region in le.clusters:
        maps = []
        for cid in region.cluster_ids:
            xs = raw.get(cid, [])
            line = f"<div><code>{esc(cid)}</code></div>"
            if xs:
                st = processed.map_stats.get(cid)
                stats = st.line() if st is not None else "no game statistics in the export"
                texts = "".join(
                    f"<li>{esc(x.raw_label)} → {esc(x.representative or '(' + x.status + ')')}</li>" for x in xs
                )
                line += (
                    f'<div class="game-stats" data-cluster="{esc(cid)}">{esc(stats)}</div>'
                    f'<details class="raw-labels" data-cluster="{esc(cid)}"><summary>{len(xs)} raw label(s)'
                    f"</summary><ul>{texts}</ul></details>"
                )
            maps.append(line)
        merged = f" (merged ×{len(region.cluster_ids)})" if region.merged else ""
        out.append(
            f"<tr><td>{esc(', '.join(region.cluster_ids))}{merged}</td><td>{region.weight:.1f}%</td>"
            f"<td>{esc(_label_text(region.labels, p.top_labels_local))}</td><td>{''.join(maps)}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _overlay_uri(bundle: Bundle, image_id: str, image_map: np.ndarray, size: int = 112) -> str:
    from PIL import Image

    from featurelens.imaging import overlay

    im = Image.fromarray(overlay(_rgb(bundle, image_id), image_map)).resize((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return _data_uri(buf.getvalue())


def make_figures(bundle: Bundle, processed: ProcessedLabels) -> dict[str, bytes]:
    """Every figure of the report: name -> PNG bytes."""
    p = processed.params
    figures: dict[str, bytes] = {}
    by_image: dict[str, list[LocalExplanation]] = {}
    for le in local_explanations(bundle, processed):
        by_image.setdefault(le.image_id, []).append(le)
    for image_id, les in by_image.items():
        if any(r.labels for le in les for r in le.clusters):
            figures[f"image_{safe_name(image_id)}"] = image_figure(bundle, les)
    for class_name, per_layer in global_explanations(bundle, processed).items():
        key = safe_name(class_name)
        figures[f"class_{key}_global"] = global_figure(
            bundle, class_name, per_layer, p.top_labels_global, p.examples_global
        )
        layers, trends = concept_trends(bundle, processed, class_name)
        figures[f"class_{key}_trends"] = trend_figure(class_name, layers, trends, p.trend)
    return figures


def write_report(
    bundle: Bundle,
    processed: ProcessedLabels,
    out_dir: str | Path,
    title: str = "Labelled network explanations",
) -> Path:
    """Write ``index.html`` and ``figures/*.png`` into ``out_dir``; return the HTML path."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figures = make_figures(bundle, processed)
    for name, png in figures.items():
        (out / "figures" / f"{name}.png").write_bytes(png)
    page = out / "index.html"
    page.write_text(report_html(bundle, processed, figures, title=title), encoding="utf-8")
    return page
