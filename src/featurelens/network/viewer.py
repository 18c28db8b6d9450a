"""A static HTML viewer of an explanation bundle: one ``index.html`` inside the bundle folder.

It opens from disk with no server: the manifest is embedded in the page (browsers block
``fetch`` of local files) and the PNGs are referenced by their relative bundle paths. The page
shows an image picker, a layer strip (the heaviest cluster of every layer, early → late) and, per
layer, the clusters as overlays ordered by weight with their weight, size (channels) and effect.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from featurelens.network.bundle import load_bundle


def render_viewer(bundle_dir: str | Path) -> str:
    """The viewer page for the bundle at ``bundle_dir`` (validated first) as an HTML string."""
    bundle = load_bundle(bundle_dir)
    data = json.dumps(bundle.to_dict(), separators=(",", ":"))
    # the JSON sits in a <script type="application/json">: only "</" could end it early
    data = data.replace("</", "<\\/")
    template = resources.files("featurelens.network").joinpath("viewer.html").read_text(encoding="utf-8")
    return template.replace("__BUNDLE_JSON__", data)


def write_viewer(bundle_dir: str | Path, name: str = "index.html") -> Path:
    """Write the viewer into the bundle folder and return its path (open it with any browser)."""
    bundle_dir = Path(bundle_dir)
    if bundle_dir.name == "bundle.json":
        bundle_dir = bundle_dir.parent
    out = bundle_dir / name
    out.write_text(render_viewer(bundle_dir), encoding="utf-8")
    return out
