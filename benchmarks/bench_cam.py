"""Benchmark: Grad-CAM, Grad-CAM++ and Score-CAM on EfficientNet-Lite0 (layer ``head``, 1280 channels), CPU.

Every time is reported as a RATIO to a bare ``torch.no_grad()`` forward pass of the same batch
measured in the same run (repetitions interleaved, medians), because this machine is shared and
absolute times drift. Sections:

1. gradient methods, batch 8, 224×224: featurelens vs torchcam (when importable);
2. exact Score-CAM, 1 image: seconds per image and peak memory (peak RSS, VmHWM, of a fresh
   subprocess per configuration), featurelens (chunk 32 / 64) vs torchcam;
3. fast Score-CAM (top-N channels): speed-up vs exact and Pearson r of the maps over real photos.

pytorch-grad-cam is not installable here (it requires torchvision, which this CPU-only install
cannot take without pip replacing torch by the CUDA build), so it is not compared.

Run:  .venv/bin/python benchmarks/bench_cam.py            (about 10-20 min on a loaded 2-core box)
      .venv/bin/python benchmarks/bench_cam.py --quick    (fewer photos / repetitions)
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

LAYER = "head"
BATCH_PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
]
CORR_PHOTOS = ["coffee", "astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"]
# speed-ups are ratios of (time / bare 1-image forward measured just before), robust to load drift
PYTORCH_GRAD_CAM_NOTE = (
    "pytorch-grad-cam: not installable here (it requires torchvision; this CPU-only environment cannot "
    "install torchvision without pip replacing torch with the CUDA build) - not compared."
)


def load():
    from featurelens.imaging import sample_images
    from featurelens.models import load_model

    spec = load_model("efficientnet_lite0")
    return spec, sample_images


def torchcam_available() -> bool:
    try:
        import torchcam.methods  # noqa: F401
    except Exception:
        return False
    return True


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------
# 1. gradient methods
# ---------------------------------------------------------------------------
def bench_gradient(spec, sample_images, reps: int) -> list[tuple[str, float, float, float]]:
    from featurelens.api import Explainer

    model = spec.model.eval()
    x = spec.prepare(list(sample_images(BATCH_PHOTOS).values()))
    ex = Explainer(model, LAYER)

    def bare():
        with torch.no_grad():
            model(x)

    configs: dict[str, Callable[[], object]] = {
        "bare no_grad forward": bare,
        "featurelens Grad-CAM": lambda: ex.explain(x, "gradcam"),
        "featurelens Grad-CAM++": lambda: ex.explain(x, "gradcampp"),
    }
    if torchcam_available():
        from torchcam.methods import GradCAM as TcGradCAM
        from torchcam.methods import GradCAMpp as TcGradCAMpp

        def torchcam_run(cls):
            def run():
                with cls(model, target_layer=LAYER) as extractor:
                    out = model(x)
                    extractor(out.argmax(1).tolist(), out)

            return run

        configs["torchcam 0.5.0 GradCAM"] = torchcam_run(TcGradCAM)
        configs["torchcam 0.5.0 GradCAMpp"] = torchcam_run(TcGradCAMpp)
    for fn in configs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in configs}
    ratios: dict[str, list[float]] = {k: [] for k in configs}
    rng = random.Random(0)
    for _ in range(reps):
        order = list(configs)
        rng.shuffle(order)
        round_t = {k: timed(configs[k]) for k in order}
        for k, t in round_t.items():
            times[k].append(t)
            ratios[k].append(t / round_t["bare no_grad forward"])
    base = statistics.median(times["bare no_grad forward"])
    rows = []
    for k in configs:
        med = statistics.median(times[k])
        rows.append((k, med, med / base, statistics.median(ratios[k])))
    return rows


# ---------------------------------------------------------------------------
# 2. exact Score-CAM in a subprocess per configuration (peak memory = ru_maxrss)
# ---------------------------------------------------------------------------
def worker(config: dict) -> dict:
    """Run one Score-CAM configuration on one photo in this (fresh) process."""
    spec, sample_images = load()
    if config.get("mode") == "fast":
        return fast_one_photo(spec, sample_images, config["photo"], config["ns"], config["default_n"])
    model = spec.model.eval()
    x = spec.prepare([sample_images([config["photo"]])[config["photo"]]])
    with torch.no_grad():
        model(x)  # warm-up
    with torch.no_grad():
        bare = statistics.median(timed(lambda: model(x)) for _ in range(5))
    setup_mb = peak_rss_mb()
    if config["impl"] == "featurelens":
        from featurelens.api import Explainer

        opts = {"batch_size": config["batch_size"], "top_n": config.get("top_n")}
        t = time.perf_counter()
        Explainer(model, LAYER).explain(x, "scorecam", method_options={"scorecam": opts})
        seconds = time.perf_counter() - t
    else:
        from torchcam.methods import ScoreCAM as TcScoreCAM

        t = time.perf_counter()
        with TcScoreCAM(model, target_layer=LAYER, batch_size=config["batch_size"]) as extractor:
            with torch.no_grad():
                out = model(x)
            extractor(out.argmax(1).tolist())
        seconds = time.perf_counter() - t
    peak_mb = peak_rss_mb()
    return {"seconds": seconds, "bare": bare, "setup_mb": setup_mb, "peak_mb": peak_mb}


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the current address space; ru_maxrss
    would also carry the parent's RSS across fork+exec on Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(config: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--worker", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {config} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_scorecam_exact(photo: str, default_n: int, parallel: bool = False) -> list[tuple[str, dict]]:
    configs = [
        ("featurelens Score-CAM exact, chunk 16 (default)", {"impl": "featurelens", "batch_size": 16}),
        ("featurelens Score-CAM exact, chunk 32", {"impl": "featurelens", "batch_size": 32}),
        ("featurelens Score-CAM exact, chunk 64", {"impl": "featurelens", "batch_size": 64}),
        (
            f"featurelens Score-CAM fast top_n={default_n}, chunk 16",
            {"impl": "featurelens", "batch_size": 16, "top_n": default_n},
        ),
    ]
    if torchcam_available():
        configs.append(
            ("torchcam 0.5.0 ScoreCAM, batch_size 32 (default)", {"impl": "torchcam", "batch_size": 32})
        )
    for _, cfg in configs:
        cfg["photo"] = photo
    if parallel:  # one process each, concurrently: fine for ratios and ru_maxrss on an overloaded box
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(configs)) as pool:
            results = list(pool.map(run_worker, [cfg for _, cfg in configs]))
        return [(name, r) for (name, _), r in zip(configs, results)]
    rows = []
    for name, cfg in configs:
        rows.append((name, run_worker(cfg)))
        print(f"  done: {name}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------
# 3. fast vs exact Score-CAM
# ---------------------------------------------------------------------------
def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else float("nan")


def fast_one_photo(spec, sample_images, name: str, ns: list[int], default_n: int) -> dict:
    """One photo: exact Score-CAM once, fast mode (activation ranking) for every N and the gradient
    ranking at the default N; speed-up = exact time / fast time on the same photo."""
    from featurelens.api import Explainer

    model = spec.model.eval()
    ex = Explainer(model, LAYER)
    x = spec.prepare([sample_images([name])[name]])

    def bare() -> float:  # a bare 1-image forward right before each timed run: load drifts
        with torch.no_grad():
            return statistics.median(timed(lambda: model(x)) for _ in range(3))

    b_exact = bare()
    t = time.perf_counter()
    exact = ex.explain(x, "scorecam", method_options={"scorecam": {"batch_size": 16}})
    t_exact = time.perf_counter() - t
    records = []
    configs = [("variance", n) for n in ns] + [("activation", default_n), ("gradient", default_n)]
    for select, n in configs:
        opts = {"batch_size": 16, "top_n": n, "select": select}
        b_fast = bare()
        t = time.perf_counter()
        fast = ex.explain(x, "scorecam", method_options={"scorecam": opts})
        t_fast = time.perf_counter() - t
        # sanity: the fast mode's channel scores are the exact ones on the chosen channels
        chosen = fast.weights[LAYER] != 0
        assert torch.allclose(fast.weights[LAYER][chosen], exact.weights[LAYER][chosen], atol=1e-5)
        records.append(
            [select, n, (t_exact / b_exact) / (t_fast / b_fast), pearson(fast.map[0], exact.map[0])]
        )
    return {"photo": name, "exact_s": t_exact, "records": records}


def bench_fast(spec, sample_images, photos: list[str], ns: list[int], default_n: int, parallel: bool) -> dict:
    if parallel:  # one subprocess per photo (the ratios are measured inside each)
        from concurrent.futures import ThreadPoolExecutor

        cfgs = [{"mode": "fast", "photo": p, "ns": ns, "default_n": default_n} for p in photos]
        with ThreadPoolExecutor(max_workers=len(cfgs)) as pool:
            results = list(pool.map(run_worker, cfgs))
    else:
        results = [fast_one_photo(spec, sample_images, p, ns, default_n) for p in photos]
    configs = [("variance", n) for n in ns] + [("activation", default_n), ("gradient", default_n)]
    out: dict = {"photos": photos, "exact_s": [], "fast": {c: {"speedup": [], "r": []} for c in configs}}
    for res in results:
        out["exact_s"].append(res["exact_s"])
        for select, n, speedup, r in res["records"]:
            out["fast"][(select, n)]["speedup"].append(speedup)
            out["fast"][(select, n)]["r"].append(r)
    return out


def choose_default(fast: dict, ns: list[int]) -> int | None:
    """The largest N (best maps) whose variance ranking meets ≥10× median speed-up and mean r ≥ 0.95."""
    ok = [
        n
        for n in ns
        if statistics.median(fast[("variance", n)]["speedup"]) >= 10
        and statistics.mean(fast[("variance", n)]["r"]) >= 0.95
    ]
    return max(ok) if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer photos and repetitions")
    parser.add_argument(
        "--reps", type=int, default=None, help="interleaved repetitions of the gradient section"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: far less noisy on a shared machine)"
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="run the Score-CAM subprocesses concurrently (overloaded machines)",
    )
    parser.add_argument("--photos", type=int, default=None, help="photos for the fast-vs-exact section")
    parser.add_argument("--skip", choices=["gradient", "exact", "fast"], action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from featurelens.methods.scorecam import DEFAULT_TOP_N

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    reps = args.reps or (5 if args.quick else 15)
    photos = CORR_PHOTOS[: args.photos or (2 if args.quick else 4)]
    ns = [32, 48, 64, 96]
    spec, sample_images = load()
    print(
        f"# featurelens CAM benchmark - EfficientNet-Lite0, layer `{LAYER}` (1280 channels), 224x224, CPU\n"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; shared, noisy machine: read the ratios.\n"
    )
    print(PYTORCH_GRAD_CAM_NOTE + "\n")
    if not torchcam_available():
        print("torchcam: not importable - not compared.\n")

    if "gradient" not in args.skip:
        rows = bench_gradient(spec, sample_images, reps)
        print(f"## Gradient methods, batch 8 ({reps} interleaved repetitions)\n")
        print("| method | median time (s) | ratio of medians | median per-round ratio |")
        print("|---|---:|---:|---:|")
        for name, med, ratio, round_ratio in rows:
            print(f"| {name} | {med:.3f} | {ratio:.2f}x | {round_ratio:.2f}x |")
        print()

    if "fast" not in args.skip:
        fast = bench_fast(spec, sample_images, photos, ns, DEFAULT_TOP_N, args.parallel)
        print(f"## Fast Score-CAM vs exact, 1 image, over {len(photos)} photos ({', '.join(photos)})\n")
        print(f"exact Score-CAM per photo (s): {', '.join(f'{t:.1f}' for t in fast['exact_s'])}\n")
        print("| ranking | N | median speed-up vs exact | min speed-up | mean r | min r |")
        print("|---|---:|---:|---:|---:|---:|")
        for (select, n), rec in fast["fast"].items():  # type: ignore[misc]
            print(
                f"| {select} | {n} | {statistics.median(rec['speedup']):.1f}x | {min(rec['speedup']):.1f}x | "
                f"{statistics.mean(rec['r']):.3f} | {min(rec['r']):.3f} |"
            )
        chosen = choose_default(fast["fast"], ns)
        print(
            f"\nlargest N (variance ranking) meeting >=10x median speed-up and mean r>=0.95 here: {chosen}; library default top_n = {DEFAULT_TOP_N}\n"
        )

    if "exact" not in args.skip:
        rows2 = bench_scorecam_exact("coffee", DEFAULT_TOP_N, parallel=args.parallel)
        print("## Score-CAM, 1 image (coffee), fresh subprocess per row\n")
        print(
            "| configuration | seconds / image | ratio to bare forward (1 image) | peak RSS (MB) | RSS growth (MB) |"
        )
        print("|---|---:|---:|---:|---:|")
        for name, r in rows2:
            print(
                f"| {name} | {r['seconds']:.1f} | {r['seconds'] / r['bare']:.0f}x | {r['peak_mb']:.0f} | "
                f"{r['peak_mb'] - r['setup_mb']:.0f} |"
            )
        print("\nRSS growth = peak RSS (VmHWM) minus peak RSS after loading the model and a warm-up forward.")


if __name__ == "__main__":
    main()
