"""run_to_shards: unreadable images listed, a concurrent writer refused, SIGKILL + resume = uninterrupted
run, Ray (workers or the driver writing) = in-process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featurelens.errors import BundleError
from featurelens.imaging import load_image
from featurelens.network.locking import BundleLockedError
from featurelens.network.runner import SHARD_DIR, run_to_shards
from featurelens.network.shards import ImageRecord, ShardStore, validate_shards


# --- the per-image work: real photo → two stacks of feature-resolution maps + metadata -------------------
def make_state() -> dict:
    return {"W": np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)}


def explain(state: dict, image_id: str, path: str, delay: float = 0.0) -> ImageRecord:
    im = load_image(path)  # raises ImageLoadError for a broken file: the runner skips and lists it
    if delay:
        time.sleep(delay)
    x = np.asarray(im.resize((14, 14)), dtype=np.float32) / 255.0           # [14, 14, 3]
    a = np.einsum("hwc,kc->khw", x, state["W"])                             # [4, 14, 14]
    b = a.reshape(4, 7, 2, 7, 2).mean(axis=(2, 4)) * 1000.0                  # [4, 7, 7]
    return ImageRecord(image_id, {"mean": float(x.mean()), "size": list(im.size)},
                       {"layer.a": a, "layer.b": np.maximum(b, 0)}, im)


class Slow:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, state, image_id, path):
        return explain(state, image_id, path, self.delay)


def make_items(folder: Path, photos, n: int = 10, broken: tuple[int, ...] = (3,)) -> list[tuple[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(photos)
    items = []
    for i in range(n):
        p = folder / f"{i:02d}.jpg"
        if i in broken:
            p.write_bytes(b"\xff\xd8 not really a jpeg")
        else:
            photos[names[i % 4]].resize((60 + 4 * i, 50)).save(p, quality=90)
        items.append((f"img{i:02d}", str(p)))
    return items


def content(out: Path) -> dict[str, ImageRecord]:
    return {r.image_id: r for r in ShardStore(out / SHARD_DIR)}


def assert_same_content(a: dict[str, ImageRecord], b: dict[str, ImageRecord]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].meta == b[k].meta
        assert a[k].image == b[k].image  # the same JPEG bytes
        assert list(a[k].maps) == list(b[k].maps)
        for name in a[k].maps:
            np.testing.assert_array_equal(a[k].maps[name], b[k].maps[name])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos):
    return make_items(tmp_path_factory.mktemp("runner-images"), photos)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("ref") / "bundle"
    run = run_to_shards(dataset, make_state, explain, out, batch_size=2)
    return out, run


def test_in_process_run_stores_every_readable_image_and_lists_the_broken(reference, dataset):
    out, run = reference
    assert [s.where for s in run.skipped] == ["img03"]
    assert "not an image file" in run.skipped[0].reason
    assert run.stored == 9 and run.stats.images == 10 and len(run.shards) == 5
    assert (out / "skipped.json").read_text().count("img03") == 1
    assert validate_shards(out / SHARD_DIR) == []
    got = content(out)
    state = make_state()
    for image_id, path in dataset:
        if image_id == "img03":
            assert image_id not in got
            continue
        want = explain(state, image_id, path)
        for name, m in want.maps.items():
            np.testing.assert_allclose(got[image_id].maps[name], m, rtol=2.0**-11, atol=0)
        assert got[image_id].meta == want.meta
    assert not (out / ".featurelens.lock").exists()
    with pytest.raises(BundleError, match="already holds 5 shards; resume"):
        run_to_shards(dataset, make_state, explain, out)
    again = run_to_shards(dataset, make_state, explain, out, resume=True)  # nothing left but the broken one
    assert again.resumed_from == 9 and again.stats.skipped == 9 and again.stored == 0
    assert [s.where for s in again.skipped] == ["img03"]


def _child(out: str, items_dir: str) -> None:
    """Run in a subprocess by the SIGKILL test: a slow run over the same items."""
    items = sorted((f"img{Path(p).stem}", str(p)) for p in Path(items_dir).glob("*.jpg"))
    run_to_shards(items, make_state, Slow(0.25), out, batch_size=2, command="child run")


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run_and_concurrent_writer_refused(tmp_path, dataset, reference):
    out = tmp_path / "bundle"
    items_dir = str(Path(dataset[0][1]).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, __file__, out.as_posix(), items_dir], env=env)
    try:
        deadline = time.time() + 120
        while len(ShardStore(out / SHARD_DIR).keys()) < 2:
            assert child.poll() is None, "the child run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        with pytest.raises(BundleLockedError, match=f"pid {child.pid} .*`child run`"):
            run_to_shards(dataset, make_state, explain, out, resume=True)
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    before = ShardStore(out / SHARD_DIR).done_ids()
    assert 3 <= len(before) < 9  # killed part-way (img03 is unreadable: 2 shards hold 3 images)
    resumed = run_to_shards(dataset, make_state, explain, out, batch_size=3, resume=True)
    assert resumed.resumed_from == len(before) and resumed.stats.skipped == len(before)
    assert validate_shards(out / SHARD_DIR) == []
    assert_same_content(content(out), content(reference[0]))


@pytest.fixture(scope="module")
def ray_here(ray_session):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_session


@pytest.mark.slow
@pytest.mark.parametrize("write_on", ["worker", "driver"])
def test_ray_gives_the_in_process_content(ray_here, tmp_path, dataset, reference, write_on):
    from featurelens.network.executor import RayExecutor

    out = tmp_path / "bundle"
    run = run_to_shards(dataset, make_state, explain, out, batch_size=2, executor=RayExecutor(workers=2),
                        write_on=write_on)
    assert run.stats.backend == "ray" and run.stored == 9 and [s.where for s in run.skipped] == ["img03"]
    assert validate_shards(out / SHARD_DIR) == []
    assert_same_content(content(out), content(reference[0]))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
