"""Peer comparison: featurelens against pytorch-grad-cam 1.5.7 and torchcam 0.5.0 on EfficientNet-Lite0.

For every method that featurelens and a peer both have, on real offline photos (scikit-image's
samples), one image at a time, predicted class, at four layers (``head``, ``blocks.15``,
``blocks.12``, ``blocks.8``):

* ``r``: Pearson correlation of the two 224×224 maps (each min-max normalised), mean over photos;
* time as a RATIO to a bare ``torch.no_grad()`` forward of the same image measured just before each
  run, in the same process (medians over photos and repetitions; which library runs first alternates),
  and ``ours / theirs`` (< 1: featurelens faster).

Both libraries explain the same model object (featurelens' EfficientNet-Lite0 with named modules).

Getting pytorch-grad-cam without installing it (it declares torchvision, which would make pip swap the
CPU torch for the CUDA build; its CAM classes never call torchvision)::

    pip download --no-deps grad-cam==1.5.7 -d /tmp/pgc && tar xzf /tmp/pgc/grad_cam-1.5.7.tar.gz -C /tmp/pgc
    pip install --no-deps ttach opencv-python-headless        # its two light imports
    pip install -c constraints.txt "featurelens[bench]"        # torchcam 0.5.0

then pass the unpacked sdist: ``--pgc /tmp/pgc/grad_cam-1.5.7`` (or set ``PYTORCH_GRAD_CAM_SRC``). This
script writes a stub ``torchvision`` package (``transforms.Compose/Normalize/ToTensor``,
``transforms.functional.resize``, ``ops.box_iou``: only image helpers import them) into a temporary
directory placed ahead of the sdist on ``sys.path``. No pytorch-grad-cam code is copied into this
repository. Without ``--pgc`` only torchcam is compared; without torchcam, only pytorch-grad-cam.

Run:  python benchmarks/bench_peer.py --pgc /tmp/pgc/grad_cam-1.5.7 [--photos 4] [--reps 3] [--quick]
      [--methods gradcam,eigencam] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars
os.environ.setdefault("OMP_NUM_THREADS", "1")

SMOOTH_SAMPLES = 2  # SS-CAM / IS-CAM draws in the comparison (both libraries): N × Score-CAM's cost
LAYERS = ["head", "blocks.15", "blocks.12", "blocks.8"]
PHOTOS = ["coffee", "chelsea", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry"]

STUB = {
    "torchvision/__init__.py": "from . import ops, transforms  # noqa: F401\n",
    "torchvision/transforms/__init__.py": (
        "class _Unavailable:\n"
        "    def __init__(self, *a, **k):\n"
        "        pass\n\n"
        "    def __call__(self, *a, **k):\n"
        "        raise RuntimeError('stub torchvision: image helpers are not available in this benchmark')\n\n"
        "Compose = Normalize = ToTensor = _Unavailable\n"
    ),
    "torchvision/transforms/functional.py": (
        "def resize(*a, **k):\n    raise RuntimeError('stub torchvision: resize is not available')\n"
    ),
    "torchvision/ops/__init__.py": (
        "def box_iou(*a, **k):\n    raise RuntimeError('stub torchvision: box_iou is not available')\n"
    ),
}


def import_pgc(path: str | None):
    """Import pytorch_grad_cam from an unpacked sdist with a stub torchvision ahead of it."""
    if not path:
        return None
    src = Path(path)
    if not (src / "pytorch_grad_cam" / "__init__.py").is_file():
        sys.exit(f"bench_peer: {src} is not an unpacked grad-cam sdist (no pytorch_grad_cam/__init__.py)")
    stub = Path(tempfile.mkdtemp(prefix="tv-stub-"))
    for rel, text in STUB.items():
        (stub / rel).parent.mkdir(parents=True, exist_ok=True)
        (stub / rel).write_text(text)
    sys.path[:0] = [str(stub), str(src)]
    import pytorch_grad_cam

    return pytorch_grad_cam


def import_torchcam():
    try:
        import torchcam.methods
    except ImportError:
        return None
    return torchcam.methods


# ---------------------------------------------------------------------------
# runners: (model, layer name, x [1, 3, H, W], class c) -> map [H, W] numpy in [0, 1]
# ---------------------------------------------------------------------------
Runner = Callable[[torch.nn.Module, str, torch.Tensor, int], np.ndarray]


def to_map(m, size: tuple[int, int]) -> np.ndarray:
    from featurelens.result import finish_maps

    t = torch.as_tensor(np.asarray(m, dtype=np.float32) if not isinstance(m, torch.Tensor) else m).float()
    if t.ndim == 2:
        t = t[None]
    return finish_maps(t[:1], size)[0].numpy()


def ours(method: str, **options) -> Runner:
    from featurelens.api import Explainer
    from featurelens.methods import get_method

    def run(model, layer, x, c):
        return Explainer(model, layer).explain(x, get_method(method, **options), target=c).map[0].numpy()

    return run


def ours_opposite_sign(method: str) -> Runner:
    """Our Eigen-CAM / EigenGrad-CAM / KPCA-CAM map with the other sign of the principal axis:
    ``ReLU(−p)`` instead of ``ReLU(p)`` (to show that a low r is the sign choice)."""
    from featurelens.api import Explainer
    from featurelens.methods.base import Method
    from featurelens.methods.eigencam import first_component
    from featurelens.methods.kpcacam import first_kernel_component

    class Opposite(Method):
        name = f"{method}-opposite-sign"
        needs_gradients = method == "eigengradcam"

        def __call__(self, layer, ctx):
            data = layer.gradient * layer.activation if method == "eigengradcam" else layer.activation
            proj = first_kernel_component(data) if method == "kpcacam" else first_component(data)
            return torch.relu(-proj), None

    def run(model, layer, x, c):
        return Explainer(model, layer).explain(x, Opposite(), target=c).map[0].numpy()

    return run


def pgc_cam(pgc, cls_name: str, target: str = "class", **kw) -> Runner:
    def run(model, layer, x, c):
        from pytorch_grad_cam.utils import model_targets as mt

        module = dict(model.named_modules())[layer]
        cls = getattr(pgc, cls_name)
        layers = [] if cls_name == "FullGrad" else [module]
        targets = [mt.ClassifierOutputReST(c) if target == "rest" else mt.ClassifierOutputTarget(c)]
        with cls(model, layers, **kw) as cam:
            out = cam(input_tensor=x, targets=targets)
        model.zero_grad(set_to_none=True)  # pytorch-grad-cam backpropagates into the parameters
        return to_map(out, x.shape[-2:])

    return run


def pgc_finer(pgc) -> Runner:
    def run(model, layer, x, c):
        module = dict(model.named_modules())[layer]
        with pgc.FinerCAM(model, [module]) as cam:
            out = cam(x, target_idx=c)
        model.zero_grad(set_to_none=True)
        return to_map(out, x.shape[-2:])

    return run


def pgc_guided(pgc, with_gradcam: bool) -> Runner:
    def run(model, layer, x, c):
        gb = pgc.GuidedBackpropReLUModel(model, device="cpu")(x.clone(), target_category=c)  # [H, W, 3]
        pixel = np.abs(gb).max(axis=2)
        if with_gradcam:
            module = dict(model.named_modules())[layer]
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            with pgc.GradCAM(model, [module]) as cam:
                pixel = pixel * cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]
        model.zero_grad(set_to_none=True)
        return to_map(pixel, x.shape[-2:])

    return run


def tc_cam(tc, cls_name: str, gradient: bool, **kw) -> Runner:
    def run(model, layer, x, c):
        cls = getattr(tc, cls_name)
        with cls(model, target_layer=layer, **kw) as extractor:
            if gradient:
                out = model(x)
                maps = extractor(class_idx=[c], scores=out)
            else:
                with torch.no_grad():
                    model(x)
                maps = extractor(class_idx=[c])
        return to_map(maps[0], x.shape[-2:])

    return run


@dataclass
class Comparison:
    method: str
    peer: str  # "pytorch-grad-cam" or "torchcam"
    theirs: Runner
    mine: Runner
    heavy: bool = False  # many forwards: fewer photos, one repetition
    per_layer: bool = True  # False: the method ignores the layer (FullGrad, Guided Backprop)
    only: list[str] | None = None  # the layers where the method applies (CAM: the map before pooling)
    note: str = ""
    alt: Runner | None = None  # featurelens' map with the principal axis' sign flipped (eigen methods)
    # r_alt: per photo max(r with our sign, r with the opposite sign), averaged
    r: dict[str, float] = field(default_factory=dict)
    r_alt: dict[str, float] = field(default_factory=dict)
    ours_x: dict[str, float] = field(default_factory=dict)
    theirs_x: dict[str, float] = field(default_factory=dict)


def comparisons(pgc, tc, wanted: set[str] | None) -> list[Comparison]:
    from featurelens.methods import method_names

    have = set(method_names())
    out: list[Comparison] = []

    def add(method, peer, theirs, mine=None, **kw):
        if method in have and (wanted is None or method in wanted):
            out.append(Comparison(method, peer, theirs, mine or ours(method), **kw))

    if pgc is not None:
        P = "pytorch-grad-cam 1.5.7"
        add("gradcam", P, pgc_cam(pgc, "GradCAM"))
        add("gradcampp", P, pgc_cam(pgc, "GradCAMPlusPlus"))
        add("xgradcam", P, pgc_cam(pgc, "XGradCAM"))
        add("layercam", P, pgc_cam(pgc, "LayerCAM"))
        add("hirescam", P, pgc_cam(pgc, "HiResCAM"))
        add("gradcamelementwise", P, pgc_cam(pgc, "GradCAMElementWise"))
        add("eigencam", P, pgc_cam(pgc, "EigenCAM"), alt=ours_opposite_sign("eigencam"))
        add("eigengradcam", P, pgc_cam(pgc, "EigenGradCAM"), alt=ours_opposite_sign("eigengradcam"))
        add("kpcacam", P, pgc_cam(pgc, "KPCA_CAM"), alt=ours_opposite_sign("kpcacam"))
        add("fem", P, pgc_cam(pgc, "FEM"))
        add("shapleycam", P, pgc_cam(pgc, "ShapleyCAM", target="rest"))
        add("finercam", P, pgc_finer(pgc))
        add("scorecam", P, pgc_cam(pgc, "ScoreCAM"), heavy=True)
        add("ablationcam", P, pgc_cam(pgc, "AblationCAM"), heavy=True)
        add("fullgrad", P, pgc_cam(pgc, "FullGrad"), per_layer=False)
        add("guidedbackprop", P, pgc_guided(pgc, False), per_layer=False)
        add("guidedgradcam", P, pgc_guided(pgc, True))
    if tc is not None:
        T = "torchcam 0.5.0"
        add("cam", T, tc_cam(tc, "CAM", False, fc_layer="fc"), only=["head"])
        add("gradcam", T, tc_cam(tc, "GradCAM", True))
        add("gradcampp", T, tc_cam(tc, "GradCAMpp", True))
        add("xgradcam", T, tc_cam(tc, "XGradCAM", True))
        add("layercam", T, tc_cam(tc, "LayerCAM", True))
        add("scorecam", T, tc_cam(tc, "ScoreCAM", False, batch_size=16), heavy=True)
        add("sscam", T, tc_cam(tc, "SSCAM", False, batch_size=16, num_samples=SMOOTH_SAMPLES),
            mine=ours("sscam", num_samples=SMOOTH_SAMPLES), heavy=True)
        add("iscam", T, tc_cam(tc, "ISCAM", False, batch_size=16, num_samples=SMOOTH_SAMPLES),
            mine=ours("iscam", num_samples=SMOOTH_SAMPLES), heavy=True)
        add("smoothgradcampp", T, tc_cam(tc, "SmoothGradCAMpp", False))
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bare_forward(model, x, reps: int = 3) -> float:
    with torch.no_grad():
        return statistics.median(timed(lambda: model(x))[0] for _ in range(reps))


def run(
    comps: list[Comparison], model, images: dict[str, torch.Tensor], reps: int, heavy_photos: int,
    heavy_layers: list[str], heavy_reps: int = 3,
) -> None:
    for comp in comps:
        try:
            layers = comp.only or (heavy_layers if comp.heavy else LAYERS)
            run_one(comp, model, images, reps, heavy_photos, layers, heavy_reps)
        except Exception as exc:  # one failing peer must not lose the other rows
            comp.note = f"failed: {type(exc).__name__}: {exc}"[:200]
            print(f"  {comp.method} vs {comp.peer}: {comp.note}", file=sys.stderr, flush=True)


def run_one(
    comp: Comparison, model, images: dict[str, torch.Tensor], reps: int, heavy_photos: int, layers: list[str],
    heavy_reps: int = 3,
) -> None:
    layers = layers if comp.per_layer else ["head"]
    names = list(images)[: heavy_photos if comp.heavy else len(images)]
    n_reps = heavy_reps if comp.heavy else reps
    x0 = images[names[0]]
    c0 = int(model(x0).argmax())
    comp.mine(model, layers[0], x0, c0)  # warm-up both
    comp.theirs(model, layers[0], x0, c0)
    for layer in layers:
        rs, mine_x, theirs_x, alts = [], [], [], []
        for name in names:
            x = images[name]
            with torch.no_grad():
                c = int(model(x).argmax())
            for rep in range(n_reps):
                # each run gets its own bare forward just before it, and the order alternates, so that
                # load drifting on a shared machine does not favour either library
                runs = [("mine", comp.mine), ("theirs", comp.theirs)]
                if (rep + names.index(name) + layers.index(layer)) % 2:
                    runs.reverse()
                got = {}
                for who, fn in runs:
                    base = bare_forward(model, x)
                    t_run, out = timed(lambda fn=fn, x=x, c=c, layer=layer: fn(model, layer, x, c))
                    got[who] = (t_run / base, out)
                mine_x.append(got["mine"][0])
                theirs_x.append(got["theirs"][0])
                m, t = got["mine"][1], got["theirs"][1]
            rs.append(pearson(m, t))
            if comp.alt is not None:  # per photo: the better of the two signs
                alts.append(max(rs[-1], pearson(comp.alt(model, layer, x, c), t)))
        key = layer if comp.per_layer else "all"
        comp.r[key] = float(np.nanmean(rs)) if not all(np.isnan(rs)) else float("nan")
        comp.ours_x[key] = statistics.median(mine_x)
        comp.theirs_x[key] = statistics.median(theirs_x)
        if alts:
            comp.r_alt[key] = float(np.nanmean(alts))
        print(
            f"  {comp.method:18s} vs {comp.peer:22s} {key:9s} r={comp.r[key]:.4f} "
            f"ours {comp.ours_x[key]:.1f}x  theirs {comp.theirs_x[key]:.1f}x",
            file=sys.stderr,
            flush=True,
        )


def table(comps: list[Comparison]) -> str:
    lines = [
        "| method | peer | r head | r blocks.15 | r blocks.12 | r blocks.8 | ours (× fwd) | theirs (× fwd) | ours / theirs (worst layer) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comps:
        if c.note.startswith("failed") or not c.ours_x:
            lines.append(f"| {c.method} | {c.peer} | {c.note or 'not run'} | | | | | | |")
            continue
        if c.per_layer:
            rs = [f"{c.r[k]:.4f}" if k in c.r else "–" for k in LAYERS]
            key = "head" if "head" in c.ours_x else next(iter(c.ours_x))
        else:
            rs = [f"{c.r['all']:.4f} (no layer)", "", "", ""]
            key = "all"
        worst = max(c.ours_x[k] / c.theirs_x[k] for k in c.ours_x)
        lines.append(
            f"| {c.method} | {c.peer} | {' | '.join(rs)} | {c.ours_x[key]:.1f} | {c.theirs_x[key]:.1f} | {worst:.2f} |"
        )
    for c in comps:
        if c.r_alt:
            flipped = ", ".join(f"{k} {v:.4f}" for k, v in c.r_alt.items())
            lines.append(
                f"\n{c.method}: r against {c.peer} when each photo's map may take either sign of the "
                f"principal axis (mean over photos of the better sign): {flipped}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pgc", default=os.environ.get("PYTORCH_GRAD_CAM_SRC"), help="unpacked grad-cam 1.5.7 sdist")
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--heavy-photos", type=int, default=2, help="photos for Score-CAM/Ablation-CAM-like methods")
    ap.add_argument("--heavy-layers", default="head,blocks.15", help="layers for the heavy methods")
    ap.add_argument("--heavy-reps", type=int, default=3, help="repetitions of the heavy methods (median)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--methods", default=None, help="comma-separated featurelens names (default: all shared)")
    ap.add_argument("--quick", action="store_true", help="2 photos, 1 heavy photo, 1 repetition")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no spin-wait on a loaded box)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.photos, args.heavy_photos, args.reps, args.heavy_reps = 2, 1, 1, 1
    torch.set_num_threads(args.threads)
    pgc = import_pgc(args.pgc)
    tc = import_torchcam()
    if pgc is None and tc is None:
        print("bench_peer: neither pytorch-grad-cam (--pgc) nor torchcam is available", file=sys.stderr)
        return 2
    from featurelens.imaging import sample_images
    from featurelens.models import load_model

    spec = load_model("efficientnet_lite0")
    model = spec.model.eval()
    photos = sample_images(PHOTOS[: args.photos])
    images = {name: spec.prepare([im]) for name, im in photos.items()}
    wanted = set(args.methods.split(",")) if args.methods else None
    comps = comparisons(pgc, tc, wanted)
    load = os.getloadavg()
    print(f"# bench_peer: {len(images)} photos, torch {torch.__version__}, {args.threads} threads, "
          f"load {load[0]:.2f} {load[1]:.2f}", file=sys.stderr)
    run(comps, model, images, args.reps, args.heavy_photos, args.heavy_layers.split(","), args.heavy_reps)
    print(f"\nEfficientNet-Lite0, {len(images)} photos ({', '.join(images)}), 1 image per call, "
          f"load average {load[0]:.2f} at start; time = median ratio to a bare no_grad forward "
          f"measured just before (at `head`, else the first layer run); ours / theirs is the worst over "
          f"the layers; heavy methods: {args.heavy_photos} photo(s) × {args.heavy_reps} repetitions at "
          f"{args.heavy_layers}; other methods: {args.reps} repetitions per photo.\n")
    print(table(comps))
    if args.json:
        Path(args.json).write_text(json.dumps([
            {"method": c.method, "peer": c.peer, "r": c.r, "ours_x": c.ours_x, "theirs_x": c.theirs_x,
             "note": c.note, "r_opposite_sign": c.r_alt}
            for c in comps
        ], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
