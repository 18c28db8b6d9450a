"""Files of an evaluation run: CSV, Markdown, curve plots (matplotlib, Agg) and an HTML summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featurelens.metrics.evaluate import DIRECTION, EvaluationTable

_STYLE = {"random": dict(color="0.55", linestyle="--"), "centre": dict(color="0.3", linestyle=":")}


def plot_curves(table: EvaluationTable, mode: str, path: str | Path) -> Path | None:
    """Mean deletion or insertion curve of every method (baselines dashed); None when absent."""
    rows = [r for r in table.rows if mode in r.curves]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    try:
        for r in rows:
            c = r.curves[mode]
            label = f"{r.method} (AUC {c.mean_auc:.3f})"
            ax.plot(
                c.fractions.cpu().numpy(),
                c.mean_curve.cpu().numpy(),
                label=label,
                lw=1.6,
                **_STYLE.get(r.method, {}),
            )
        ax.set_xlabel("fraction of pixels " + ("removed" if mode == "deletion" else "inserted"))
        ax.set_ylabel("score (mean over images)")
        ax.set_title(
            f"{mode.capitalize()} curves ({'lower' if mode == 'deletion' else 'higher'} AUC is better)"
        )
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right" if mode == "deletion" else "lower right")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_sanity(table: EvaluationTable, path: str | Path) -> Path | None:
    """Rank correlation with the original maps as stages are randomised from the top."""
    rows = [r for r in table.rows if r.sanity is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    stages = rows[0].sanity.stages  # type: ignore[union-attr]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.32 * len(stages) + 2), 4.2), dpi=110)
    try:
        for r in rows:
            assert r.sanity is not None
            ax.plot(
                range(len(stages)),
                r.sanity.mean_per_stage.numpy(),
                marker="o",
                ms=3,
                label=r.method,
                **_STYLE.get(r.method, {}),
            )
        ax.set_xticks(range(len(stages)), stages, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("Spearman ρ with the original map")
        ax.set_xlabel("randomised down to (cascading from the top)")
        ax.set_ylim(-0.5, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_outputs(
    table: EvaluationTable,
    out_dir: str | Path,
    *,
    sample_names: Sequence[str],
    title: str = "featurelens evaluation",
    skipped: Sequence[tuple[str, str]] = (),
    details: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.csv``, ``per_image.csv``, ``results.md``, curve PNGs and ``index.html``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["csv"] = table.write_csv(out / "results.csv")
    files["per_image"] = table.write_per_sample_csv(out / "per_image.csv", sample_names)
    md = out / "results.md"
    md.write_text(
        markdown_report(table, sample_names, skipped=skipped, details=details) + "\n", encoding="utf-8"
    )
    files["markdown"] = md
    for mode in ("deletion", "insertion"):
        p = plot_curves(table, mode, out / f"curves_{mode}.png")
        if p is not None:
            files[f"curves_{mode}"] = p
    p = plot_sanity(table, out / "sanity.png")
    if p is not None:
        files["sanity"] = p
    files["html"] = write_html(
        table, out / "index.html", files, sample_names, title=title, skipped=skipped, details=details
    )
    return files


def markdown_report(
    table: EvaluationTable,
    sample_names: Sequence[str],
    *,
    skipped: Sequence[tuple[str, str]] = (),
    details: dict[str, Any] | None = None,
) -> str:
    """The Markdown table with a short header of what was run (and what was skipped)."""
    meta = table.meta
    lines = [
        f"{len(sample_names)} images, metrics: {', '.join(meta.get('metrics', []))}; "
        f"{meta.get('steps')} steps, {meta.get('baseline')} baseline for deletion/insertion. "
        "↑ higher is better, ↓ lower is better; best method in bold; `random` and `centre` are baselines.",
        "",
        table.to_markdown(),
    ]
    if details:
        lines.append("")
        lines += [f"- {k}: {v}" for k, v in details.items()]
    if skipped:
        lines.append(
            f"\nSkipped {len(skipped)} file(s): " + ", ".join(f"`{n}` ({why})" for n, why in skipped)
        )
    return "\n".join(lines)


def write_html(
    table: EvaluationTable,
    path: str | Path,
    files: dict[str, Path],
    sample_names: Sequence[str],
    *,
    title: str,
    skipped: Sequence[tuple[str, str]] = (),
    details: dict[str, Any] | None = None,
) -> Path:
    """A self-contained HTML summary (plots embedded) built with :mod:`featurelens.report`."""
    from featurelens.report import Raw, Section, error_box, escape, figure, gallery, page
    from featurelens.report import table as html_table

    best = {c: table.best_methods(c) for c in table.columns}
    rows = []
    for r in table.rows:
        cells: list[Any] = [r.method + (" (baseline)" if r.is_baseline else "")]
        for c in table.columns:
            v = r.values.get(c, math.nan)
            text = (
                "n/a"
                if not math.isfinite(v)
                else (f"{v:.1f}" if c in ("average_drop", "increase_confidence") else f"{v:.3f}")
            )
            cells.append(Raw(f"<strong>{escape(text)}</strong>") if r.method in best[c] else text)
        rows.append(cells)
    heads = table.header()
    summary = [
        f"<p>{len(sample_names)} images: {escape(', '.join(sample_names[:30]))}"
        f"{' …' if len(sample_names) > 30 else ''}.</p>"
    ]
    meta = table.meta
    summary.append(
        f"<p>Deletion/insertion: {escape(meta.get('steps'))} steps, {escape(meta.get('baseline'))} baseline. "
        "↑ higher is better, ↓ lower is better; the best method per column is in bold. "
        "<em>random</em> and <em>centre</em> are reference maps that any method should beat.</p>"
    )
    for k, v in (details or {}).items():
        summary.append(f"<p>{escape(k)}: {escape(v)}</p>")
    sections = [Section("Results", "".join(summary) + str(html_table(rows, heads)))]
    if skipped:
        sections.append(
            Section(
                f"Skipped files ({len(skipped)})",
                str(
                    error_box(
                        f"{len(skipped)} file(s) skipped", "; ".join(f"{n}: {why}" for n, why in skipped)
                    )
                ),
            )
        )
    figs = [
        figure(files[k], k.replace("_", " "))
        for k in ("curves_deletion", "curves_insertion", "sanity")
        if k in files
    ]
    if figs:
        sections.append(Section("Curves", str(gallery(figs, cell=420))))
    links = "".join(
        f'<li><a href="{escape(p.name)}">{escape(p.name)}</a></li>' for k, p in files.items() if k != "html"
    )
    sections.append(Section("Files", f"<ul>{links}</ul>"))
    path = Path(path)
    direction = ", ".join(f"{c} {'↑' if DIRECTION[c] > 0 else '↓'}" for c in table.columns)
    path.write_text(page(title, sections, subtitle=direction), encoding="utf-8")
    return path
