"""``featurelens demo``: the main job, offline, on the embedded default model.

The demo is a list of sections. Each section is a function ``section(ctx: DemoContext) -> DemoSection``
named in :data:`SECTIONS` as ``"module:function"``; the runner calls them in order and writes one
self-contained HTML report (``index.html``) with every section's fragment. A section writes its files
under ``ctx.out_dir / <its own sub-folder>`` and refers to them by paths relative to ``ctx.out_dir``
(or embeds them as data URIs). A section that fails is reported in the page and in the exit code;
it never hides the others.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: sections of the demo report, in order ("module:function")
SECTIONS: list[str] = [
    "featurelens.report.demo_cam:section",
    "featurelens.similarity.demo:section",
    "featurelens.network.demo:section",
    "featurelens.labels.demo:section",
]


@dataclass
class DemoContext:
    out_dir: Path
    quick: bool = False  # smaller workloads (used by the test suite)
    full: bool = False  # exact everything (e.g. exact Score-CAM) instead of the methods' fast modes
    log: Callable[[str], None] = print
    cache: dict[str, Any] = field(default_factory=dict)  # share loaded models/photos between sections

    def spec(self) -> Any:
        """The default classifier (loaded once for all sections)."""
        if "spec" not in self.cache:
            from featurelens.models import load_model

            self.cache["spec"] = load_model()
        return self.cache["spec"]

    def photos(self) -> dict[str, Any]:
        """Real offline photos (scikit-image): name -> RGB PIL image."""
        if "photos" not in self.cache:
            from featurelens.imaging import sample_images

            self.cache["photos"] = sample_images(["coffee", "chelsea", "astronaut", "rocket", "horse", "camera"])
        return self.cache["photos"]


@dataclass
class DemoSection:
    title: str
    html: str  # an HTML fragment; file references are relative to ctx.out_dir
    files: list[str] = field(default_factory=list)  # files written (relative to ctx.out_dir)
    summary: dict[str, Any] = field(default_factory=dict)  # figures for demo.json


class SectionFailed(RuntimeError):
    """Raised by a section that finished only partly: the runner shows its fragment *and* an error box.

    Any other exception is shown as an error box alone. Either way the demo's exit code is 1.
    """

    def __init__(self, message: str, *, html: str = "", files: Sequence[str] = (), summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.html = html
        self.files = list(files)
        self.summary = dict(summary or {})


def _resolve(entry: str) -> Callable[[DemoContext], DemoSection]:
    module, _, func = entry.partition(":")
    if not module or not func:
        raise ValueError(f"a demo section is 'module:function', got {entry!r}")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(
    out_dir: str | Path = "featurelens-demo",
    quick: bool = False,
    *,
    full: bool = False,
    sections: Sequence[str] | None = None,
    log: Callable[[str], None] = _log,
) -> int:
    """Run every section of :data:`SECTIONS` (or ``sections``) and write ``index.html`` and ``demo.json``.

    ``full`` runs every method exactly (the default uses fast modes where a method has one, e.g.
    Score-CAM on its top channels); ``quick`` shrinks the workloads (the test suite).
    Returns the exit code: 0 when every section succeeded, 1 when one or more failed (each failure is
    an error box in the page and an ``"error"`` entry in ``demo.json``; the other sections still run).
    """
    from featurelens import __version__
    from featurelens.report.html import Section, error_box, page

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from featurelens.errors import FeaturelensError

        raise FeaturelensError(f"{out}: output path exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if quick and full:
        from featurelens.errors import FeaturelensError

        raise FeaturelensError("quick and full exclude each other")
    ctx = DemoContext(out_dir=out, quick=quick, full=full, log=log)
    entries = list(SECTIONS if sections is None else sections)
    page_sections: list[Section] = []
    records: list[dict[str, Any]] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for n, entry in enumerate(entries, 1):
        log(f"[{n}/{len(entries)}] {entry}")
        t0, c0 = time.perf_counter(), time.process_time()
        record: dict[str, Any] = {"entry": entry}
        try:
            result = _resolve(entry)(ctx)
            if not isinstance(result, DemoSection):
                raise TypeError(f"{entry} returned {type(result).__name__}, not a DemoSection")
            page_sections.append(Section(result.title, result.html))
            record.update(title=result.title, status="ok", files=list(result.files), summary=result.summary)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            details = traceback.format_exc()
            title = entry.partition(":")[0].removeprefix("featurelens.")
            body = error_box(f"This section failed ({entry})", message, details)
            if isinstance(exc, SectionFailed):
                body = body + exc.html
                record.update(files=exc.files, summary=exc.summary)
            page_sections.append(Section(f"{title}: failed", body, error=True))
            record.update(title=title, status="error", error=message)
            log(f"  failed: {message}")
        record["seconds"] = round(time.perf_counter() - t0, 2)
        record["cpu_seconds"] = round(time.process_time() - c0, 2)  # all threads of this process
        records.append(record)
    failed = [r["entry"] for r in records if r["status"] != "ok"]
    status = "all sections ran" if not failed else f"{len(failed)} of {len(records)} section(s) failed"
    html = page(
        "featurelens demo",
        page_sections or [Section("No sections", "<p>featurelens.demo.SECTIONS is empty.</p>")],
        subtitle=f"{status} · {'quick' if quick else 'full (exact)' if full else 'default (fast modes)'} run · offline · featurelens {__version__}",
        footer=f"Generated by `featurelens demo` in {time.perf_counter() - started:.0f} s. "
        "Files referenced by the page live next to index.html.",
    )
    (out / "index.html").write_text(html, encoding="utf-8")
    summary = {
        "featurelens": __version__,
        "quick": quick,
        "full": full,
        "ok": not failed,
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time() - cpu_started, 2),
        "sections": records,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return 0 if not failed else 1
