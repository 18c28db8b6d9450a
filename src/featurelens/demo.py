"""``featurelens demo``: the main job, offline, on the embedded default model.

The demo is a list of sections. Each section is a function ``section(ctx: DemoContext) -> DemoSection``
named in :data:`SECTIONS` as ``"module:function"``; the runner calls them in order and writes one
self-contained HTML report (``index.html``) with every section's fragment. A section writes its files
under ``ctx.out_dir / <its own sub-folder>`` and refers to them by paths relative to ``ctx.out_dir``
(or embeds them as data URIs). A section that fails is reported in the page and in the exit code;
it never hides the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: sections of the demo report, in order ("module:function")
SECTIONS: list[str] = []


@dataclass
class DemoContext:
    out_dir: Path
    quick: bool = False  # smaller workloads (used by the test suite)
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
