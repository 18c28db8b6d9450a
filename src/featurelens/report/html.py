"""A small, generic builder for self-contained HTML pages.

Every report of featurelens (the demo, similarity pages, network explanations, label summaries) is
built from three pieces:

* :func:`figure` – an image (a file, a PIL image or an ``H×W(×C)`` array) with a caption, embedded
  as a ``data:`` URI (default, so the page works on its own) or linked by a relative path;
* :func:`table` – rows of cells under headers;
* :func:`page` – a complete HTML document with a title and a list of sections.

All text is HTML-escaped. To insert an HTML fragment you built yourself (e.g. a figure inside a
table cell), wrap it in :class:`Raw`; the functions here return :class:`Raw` so they nest freely.
No external CSS, scripts or fonts are used: a page opens offline in any browser.
"""

from __future__ import annotations

import base64
import html
import io
import mimetypes
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "Raw",
    "Section",
    "badge",
    "data_uri",
    "error_box",
    "escape",
    "figure",
    "gallery",
    "page",
    "table",
]


class Raw(str):
    """A string of trusted HTML that the builders insert without escaping."""

    __slots__ = ()


def escape(value: Any) -> str:
    """HTML-escape ``value`` (``str()`` first); :class:`Raw` values pass through unchanged."""
    if isinstance(value, Raw):
        return str(value)
    return html.escape("" if value is None else str(value), quote=True)


@dataclass
class Section:
    """One section of a page: a heading and an HTML body (escape text yourself or use :class:`Raw`)."""

    title: str
    body: str
    id: str | None = None
    error: bool = False


CSS = """
:root { color-scheme: light; --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --accent:#2457c5; --bad:#b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: #f6f7f9; }
header.page { background: #1d2330; color: #fff; padding: 22px 32px 18px; }
header.page h1 { margin: 0 0 4px; font-size: 26px; }
header.page p { margin: 0; color: #c9cfdb; }
nav.toc { padding: 10px 32px; background: #fff; border-bottom: 1px solid var(--line); font-size: 14px; }
nav.toc a { margin-right: 18px; color: var(--accent); text-decoration: none; }
main { padding: 8px 32px 40px; max-width: 1500px; }
section.block { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 18px 22px;
                margin: 20px 0; }
section.block > h2 { margin: 0 0 12px; font-size: 21px; }
h3 { font-size: 17px; margin: 18px 0 8px; }
p.note, .muted { color: var(--muted); }
figure.fig { display: inline-block; vertical-align: top; margin: 0 10px 12px 0; }
figure.fig img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px;
                 image-rendering: auto; }
figure.fig figcaption { font-size: 13px; color: var(--fg); margin-top: 4px; max-width: 100%; }
div.gallery { display: grid; gap: 10px; grid-template-columns: repeat(auto-fill, minmax(var(--cell, 200px), 1fr)); }
div.gallery figure.fig { margin: 0; }
table.data { border-collapse: collapse; margin: 6px 0 12px; font-size: 14px; }
table.data th, table.data td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
                               vertical-align: top; }
table.data th { background: #eef1f6; font-weight: 600; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #e6ecf9; color: var(--accent);
         font-size: 13px; margin-right: 4px; }
div.error { border: 2px solid var(--bad); background: #fdecea; color: #5f1410; border-radius: 6px; padding: 10px 14px; }
div.error pre { white-space: pre-wrap; font-size: 12px; max-height: 260px; overflow: auto; }
span.bar { display: inline-block; height: 10px; background: var(--accent); border-radius: 2px; vertical-align: middle; }
footer { color: var(--muted); font-size: 13px; padding: 0 32px 30px; }
"""


def _png_bytes(image: Image.Image, fmt: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    fmt = fmt.lower()
    if fmt in ("jpg", "jpeg"):
        image.convert("RGB").save(buf, format="JPEG", quality=88)
        return buf.getvalue(), "image/jpeg"
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue(), "image/png"


def _to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.nan_to_num(arr.astype(np.float64))
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"cannot show an array of shape {arr.shape} as an image")
    return Image.fromarray(arr)


def data_uri(
    image: str | os.PathLike[str] | Image.Image | np.ndarray,
    *,
    fmt: str = "png",
    max_size: int | None = None,
) -> str:
    """A ``data:`` URI of an image file (bytes as they are) or of a PIL image / array (encoded as ``fmt``).

    ``max_size`` shrinks in-memory images (and files, which are then re-encoded) so that the longer
    side is at most that many pixels.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if max_size is None:
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        with Image.open(path) as im:
            image = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")
    pil = _to_pil(image)
    if max_size is not None and max(pil.size) > max_size:
        scale = max_size / max(pil.size)
        pil = pil.resize(
            (max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BILINEAR
        )
    raw, mime = _png_bytes(pil, fmt)
    return f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")


def figure(
    image: str | os.PathLike[str] | Image.Image | np.ndarray,
    caption: Any = "",
    *,
    embed: bool = True,
    base_dir: str | os.PathLike[str] | None = None,
    width: int | None = None,
    max_size: int | None = None,
    fmt: str = "png",
    alt: str | None = None,
    link: str | os.PathLike[str] | None = None,
) -> Raw:
    """An image with a caption.

    Args:
        image: a file path, a PIL image or an ``H×W(×C)`` array (uint8, or floats in [0, 1]).
        caption: text (escaped) or :class:`Raw` HTML.
        embed: inline the image as a data URI (default) so the page needs no other file. With
            ``embed=False`` a path is linked relative to ``base_dir`` (the page's folder); arrays and PIL
            images are always embedded.
        width: display width in CSS pixels (the image keeps its own resolution).
        max_size: shrink embedded images to this longer side, to keep pages small.
        fmt: ``"png"`` or ``"jpeg"`` for embedded arrays/PIL images.
        link: optional target (e.g. the full-resolution file, relative to the page) when clicked.
    """
    if embed or not isinstance(image, (str, os.PathLike)):
        src = data_uri(image, fmt=fmt, max_size=max_size)
    else:
        path = Path(image)
        if base_dir is not None:
            path = Path(os.path.relpath(path, base_dir))
        src = path.as_posix()
    alt_text = alt if alt is not None else (caption if not isinstance(caption, Raw) else "")
    style = f' style="width:{int(width)}px"' if width else ""
    img = f'<img src="{escape(src)}" alt="{escape(alt_text)}" loading="lazy">'
    if link is not None:
        img = f'<a href="{escape(Path(link).as_posix())}">{img}</a>'
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption not in (None, "") else ""
    return Raw(f'<figure class="fig"{style}>{img}{cap}</figure>')


def gallery(figures: Iterable[str], cell: int = 200) -> Raw:
    """Figures in a responsive grid whose cells are at least ``cell`` pixels wide."""
    return Raw(
        f'<div class="gallery" style="--cell:{int(cell)}px">' + "".join(str(f) for f in figures) + "</div>"
    )


def _cell(value: Any) -> str:
    if isinstance(value, Raw):
        return f"<td>{value}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{escape(value)}</td>"
    if isinstance(value, (int, np.integer)):
        return f'<td class="num">{int(value)}</td>'
    if isinstance(value, (float, np.floating)):
        return f'<td class="num">{float(value):.4g}</td>'
    return f"<td>{escape(value)}</td>"


def table(rows: Iterable[Sequence[Any] | Mapping[str, Any]], headers: Sequence[str] | None = None) -> Raw:
    """An HTML table. Rows are sequences, or mappings keyed by header (missing keys are blank).

    Text is escaped; numbers are right-aligned (floats to 4 significant digits); :class:`Raw` cells
    are inserted as HTML.
    """
    rows = list(rows)
    if headers is None and rows and isinstance(rows[0], Mapping):
        headers = list(rows[0].keys())
    parts = ['<table class="data">']
    if headers:
        parts.append("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr></thead>")
    parts.append("<tbody>")
    for row in rows:
        cells = [row.get(h, "") for h in headers or []] if isinstance(row, Mapping) else list(row)
        parts.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    return Raw("".join(parts))


def badge(text: Any) -> Raw:
    return Raw(f'<span class="badge">{escape(text)}</span>')


def error_box(title: Any, message: Any, details: Any = None) -> Raw:
    """A red box for a failure: a title, a one-line message, optional details (e.g. a traceback)."""
    more = f"<details><summary>details</summary><pre>{escape(details)}</pre></details>" if details else ""
    return Raw(f'<div class="error"><strong>{escape(title)}</strong><p>{escape(message)}</p>{more}</div>')


def dataset_list(records: Sequence[Mapping[str, Any]]) -> Raw:
    """A small dataset as one list item per class: records ``{"image", "class", "augmented"}``, where
    ``augmented`` says how a view was made (``None`` for a real photo); augmented views are marked."""
    classes: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        classes.setdefault(str(r["class"]), []).append(r)
    items = "".join(
        f"<li><b>{escape(cls)}</b> ({len(rs)} images): " + ", ".join(
            f"<code>{escape(r['image'])}</code>" + (f" <b style='color:#b45309'>[{escape(r['augmented'])}]</b>"
                                                   if r.get("augmented") else " (real photo)")
            for r in rs) + "</li>"
        for cls, rs in classes.items())
    return Raw(f"<ul>{items}</ul>")


def _slug(text: str, used: set[str]) -> str:
    base = "".join(c.lower() if c.isalnum() else "-" for c in text).strip("-") or "section"
    while "--" in base:
        base = base.replace("--", "-")
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def page(
    title: str,
    sections: Iterable[Section | tuple[str, str]],
    *,
    subtitle: str | None = None,
    footer: str | None = None,
    toc: bool = True,
) -> str:
    """A complete, self-contained HTML document.

    ``sections`` are :class:`Section` objects or ``(title, html_body)`` pairs; bodies are inserted as
    HTML (build them with :func:`figure`, :func:`table`, :func:`escape`). Titles are escaped.
    """
    items = [s if isinstance(s, Section) else Section(str(s[0]), str(s[1])) for s in sections]
    used: set[str] = set()
    ids = [s.id or _slug(s.title, used) for s in items]
    nav = ""
    if toc and len(items) > 1:
        nav = (
            '<nav class="toc">'
            + "".join(f'<a href="#{escape(i)}">{escape(s.title)}</a>' for s, i in zip(items, ids))
            + "</nav>"
        )
    body = "".join(
        f'<section class="block{" failed" if s.error else ""}" id="{escape(i)}"><h2>{escape(s.title)}</h2>{s.body}</section>'
        for s, i in zip(items, ids)
    )
    sub = f"<p>{escape(subtitle)}</p>" if subtitle else ""
    foot = f"<footer>{escape(footer)}</footer>" if footer else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f'<body><header class="page"><h1>{escape(title)}</h1>{sub}</header>{nav}<main>{body}</main>{foot}</body></html>\n'
    )
