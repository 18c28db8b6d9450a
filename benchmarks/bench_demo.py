"""Benchmark: the time of ``featurelens demo``, per section and per CAM method, default vs ``--full``.

Runs the demo (all sections, or only the CAM section with ``--cam-only``) in the default mode (fast
modes where a method has one: Score-CAM on its top-48 channels) and in the full mode (exact
Score-CAM) in the same process, and prints each section's seconds (from ``demo.json``), each CAM
method's seconds, and the ratio default / full. The machine is shared: note ``uptime`` next to the
figures; the ratio is what compares.

Run:  .venv/bin/python benchmarks/bench_demo.py               (about 7 min: two whole demos)
      .venv/bin/python benchmarks/bench_demo.py --cam-only    (about 4 min)
      .venv/bin/python benchmarks/bench_demo.py --modes default   (one default demo, about 2-3 min)
      .venv/bin/python benchmarks/bench_demo.py --workload        (Score-CAM's masked forwards, exact vs fast)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def run(mode: str, cam_only: bool) -> dict[str, Any]:
    from featurelens.demo import SECTIONS, run_demo

    sections = [SECTIONS[0]] if cam_only else None
    with tempfile.TemporaryDirectory() as tmp:
        code = run_demo(tmp, full=mode == "full", sections=sections, log=lambda _m: None)
        summary = json.loads((Path(tmp) / "demo.json").read_text())
    summary["exit_code"] = code
    return summary


def scorecam_workload() -> dict[str, int]:
    """Masked images Score-CAM forwards on the demo's six photos at the default layer, exact vs fast
    (a load-independent measure of its cost: one all-zero mask per photo for the constant channels)."""
    from featurelens.demo import DemoContext
    from featurelens.engine import capture
    from featurelens.methods import LayerState, get_method

    ctx = DemoContext(out_dir=Path(tempfile.gettempdir()))
    spec = ctx.spec()
    x = spec.prepare(list(ctx.photos().values()))
    layer = spec.resolve_default_layer()
    a = capture(spec.model, x, layer, gradients=False).activations[layer][0]
    counts = {}
    for name, method in (("exact", get_method("scorecam")), ("fast", get_method("scorecam", fast=True))):
        chosen = method.selected_channels(LayerState(layer, a, None))
        total = 0
        for b in range(a.shape[0]):
            flat = a[b, chosen[b]].flatten(1)
            constant = flat.amax(1) == flat.amin(1)
            total += int((~constant).sum()) + int(bool(constant.any()))
        counts[name] = total
    return counts


def fidelity(names: tuple[str, ...] = ("sscam", "iscam"), reference: dict[str, Any] | None = None,
             candidates: tuple[dict[str, Any], ...] = ({"top_n": 16, "num_samples": 4}, {"top_n": 8, "num_samples": 4},
                                                       {"top_n": 12, "num_samples": 3})) -> None:
    """Pearson r of each candidate fast mode's maps with a richer reference run (default: top 48
    channels x 8 samples) on the six demo photos, and its masked forwards per photo."""
    import torch

    from featurelens.api import Explainer
    from featurelens.demo import DemoContext
    from featurelens.methods import get_method

    reference = reference or {"top_n": 48, "num_samples": 8}
    ctx = DemoContext(out_dir=Path(tempfile.gettempdir()))
    spec = ctx.spec()
    x = spec.prepare(list(ctx.photos().values()))
    explainer = Explainer(spec.model, spec.resolve_default_layer())

    def maps(name: str, options: dict[str, Any]) -> torch.Tensor:
        return explainer.explain(x, get_method(name, **options), None).map.flatten(1).float()

    for name in names:
        ref = maps(name, reference)
        for options in candidates:
            got = maps(name, options)
            r = [float(torch.corrcoef(torch.stack([a, b]))[0, 1]) for a, b in zip(ref, got)]
            print(f"{name} {options}: {options['top_n'] * options['num_samples']} masked forwards/photo, "
                  f"r vs {reference} median {sorted(r)[len(r) // 2]:.3f} min {min(r):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cam-only", action="store_true", help="only the CAM section")
    parser.add_argument("--modes", default="default,full", help="comma-separated: default, full")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--workload", action="store_true", help="only count Score-CAM's masked forwards, exact vs fast"
    )
    parser.add_argument("--fidelity", action="store_true",
                        help="only: SS-CAM / IS-CAM fast modes against a richer reference run (map r)")
    args = parser.parse_args()
    if args.fidelity:
        fidelity()
        return
    if args.workload:
        counts = scorecam_workload()
        print(f"Score-CAM masked images on the six demo photos: exact {counts['exact']}, fast {counts['fast']}, "
              f"fast / exact = {counts['fast'] / counts['exact']:.3f}")
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    results = {}
    for mode in modes:  # each mode's figures are printed as soon as it has run
        summary = results[mode] = run(mode, args.cam_only)
        print(f"\n== {mode}: {summary['seconds']:.1f} s in total, {summary.get('cpu_seconds', 0):.1f} CPU-s "
              f"(exit code {summary['exit_code']})")
        for s in summary["sections"]:
            print(f"  {s['seconds']:7.1f} s  {s.get('cpu_seconds', 0):7.1f} CPU-s  {s['entry']}  [{s['status']}]")
        cam = summary["sections"][0]
        for method, sec in cam.get("summary", {}).get("seconds", {}).items():
            mode_text = cam["summary"].get("modes", {}).get(method, "")
            print(f"      {sec:7.2f} s  {method}  {mode_text}")
        print(f"load now: {os.getloadavg()[0]:.2f}", flush=True)
    if "default" in results and "full" in results:
        d, f = results["default"], results["full"]
        print(f"\ndefault / full, whole run: {d['seconds'] / f['seconds']:.3f}")
        print(
            "default / full, CAM section: "
            f"{d['sections'][0]['seconds'] / f['sections'][0]['seconds']:.3f}"
        )
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
