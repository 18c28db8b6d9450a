"""The executor: in-process and on a real local Ray instance (num_cpus=2), worker death and retry."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from featurelens.imaging import load_image
from featurelens.network.executor import (
    Batch,
    ExecutorError,
    InProcessExecutor,
    RayExecutor,
    make_batches,
    make_executor,
)


# --- the per-image work: a real photo → a fixed random projection of its 16×16 thumbnail ---------------
def make_state() -> dict:
    return {"pid": os.getpid(), "W": np.random.default_rng(0).standard_normal((16 * 16 * 3, 8)), "batches": 0}


def embed(state: dict, batch: Batch, kill_marker: str | None = None, kill_batch: int = 1,
          fail_on: str | None = None) -> list[dict]:
    """One result per image. With ``kill_marker``: the first attempt at batch ``kill_batch`` creates the
    marker file and kills its own process (``os._exit``) halfway through the batch."""
    state["batches"] += 1
    out = []
    for k, (image_id, path) in enumerate(zip(batch.ids, batch.payloads)):
        if kill_marker and batch.index == kill_batch and k == len(batch) // 2 and not os.path.exists(kill_marker):
            Path(kill_marker).write_text(str(os.getpid()))
            os._exit(3)
        if fail_on == image_id:
            raise ValueError(f"bad image {image_id}")
        x = np.asarray(load_image(path).resize((16, 16)), dtype=np.float64).ravel() / 255.0
        out.append({"id": image_id, "feat": x @ state["W"], "pid": state["pid"], "batch": batch.index})
    return out


def reference(path: Path) -> np.ndarray:
    """Slow, direct version of the same computation for one image."""
    W = np.random.default_rng(0).standard_normal((16 * 16 * 3, 8))
    im = load_image(path).resize((16, 16))
    x = np.array([[c / 255.0 for c in im.getpixel((i, j))] for j in range(16) for i in range(16)]).ravel()
    return np.array([sum(x[r] * W[r, c] for r in range(len(x))) for c in range(8)])


@pytest.fixture(scope="module")
def items(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("exec")
    out = []
    for i in range(11):  # 11 images, batch 3 → 4 batches, the last one short
        name = list(photos)[i % 4]
        p = d / f"{i:02d}_{name}.jpg"
        photos[name].resize((64 + 8 * i, 48)).save(p, quality=92)
        out.append((p.stem, p))
    return out


class Collector:
    def __init__(self) -> None:
        self.calls: list[tuple[int, tuple[str, ...]]] = []
        self.results: dict[str, dict] = {}

    def __call__(self, batch: Batch, results: list) -> None:
        self.calls.append((batch.index, batch.ids))
        for image_id, r in zip(batch.ids, results):
            assert image_id not in self.results, f"{image_id} delivered twice"
            assert r["id"] == image_id
            self.results[image_id] = r


def test_make_batches_skip_and_keys(items):
    batches, n_skipped = make_batches(items, 3, skip={items[0][0], items[4][0], "not-there"})
    assert n_skipped == 2
    assert [len(b) for b in batches] == [3, 3, 3]
    assert [i for b in batches for i in b.ids] == [i for i, _ in items if i not in (items[0][0], items[4][0])]
    assert [b.index for b in batches] == [0, 1, 2]
    again, _ = make_batches(items, 3, skip={items[0][0], items[4][0]})
    assert [b.key for b in again] == [b.key for b in batches] and len({b.key for b in batches}) == 3
    with pytest.raises(ExecutorError, match="given twice"):
        make_batches([*items, items[0]], 3)
    with pytest.raises(ExecutorError, match="at least 1"):
        make_batches(items, 0)


def test_in_process_results_match_reference_factory_once_and_skip(items):
    created = []

    def factory():
        created.append(1)
        return make_state()

    sink, seen = Collector(), []
    stats = InProcessExecutor().run(items, factory, embed, sink, batch_size=3, progress=seen.append)
    assert len(created) == 1 and stats.backend == "in-process"
    assert (stats.images, stats.batches, stats.skipped, stats.retries) == (11, 4, 0, 0)
    assert sum(seen) == 11 and [c[0] for c in sink.calls] == [0, 1, 2, 3]
    for image_id, path in items[:3]:
        np.testing.assert_allclose(sink.results[image_id]["feat"], reference(path), rtol=1e-10)
    # resume: the done ids are skipped, the rest are delivered once
    done = {i for i, _ in items[:5]}
    sink2 = Collector()
    stats2 = InProcessExecutor().run(items, make_state, embed, sink2, batch_size=3, skip=done)
    assert stats2.skipped == 5 and set(sink2.results) == {i for i, _ in items} - done
    for image_id in sink2.results:
        np.testing.assert_array_equal(sink2.results[image_id]["feat"], sink.results[image_id]["feat"])
    assert make_executor().__class__ is InProcessExecutor
    assert isinstance(make_executor(ray=True, workers=2), RayExecutor)


def test_in_process_progress_bar_and_errors(items, capsys):
    InProcessExecutor().run(items[:4], make_state, embed, Collector(), batch_size=2, progress=True)
    assert "4/4" in capsys.readouterr().err
    with pytest.raises(ValueError, match="bad image"):
        InProcessExecutor().run(items, make_state, functools.partial(embed, fail_on=items[2][0]), Collector())
    with pytest.raises(ExecutorError, match="returned 0 results for 3 images"):
        InProcessExecutor().run(items, make_state, lambda s, b: [], Collector(), batch_size=3)


def test_delivery_never_gives_a_batch_or_an_id_twice():
    from featurelens.network.executor import _Delivery

    got = []
    d = _Delivery(lambda b, r: got.append(b.index), False, 4)
    b0, b1 = Batch(0, ("a", "b"), (1, 2)), Batch(1, ("b", "c"), (2, 3))
    assert d.deliver(b0, [1, 2]) is True
    assert d.deliver(b0, [1, 2]) is False  # a late duplicate of a finished batch is dropped
    with pytest.raises(ExecutorError, match="delivered twice"):
        d.deliver(b1, [2, 3])
    assert got == [0]


def broken_factory():
    raise RuntimeError("model file missing")


# --- Ray ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local(ray_session):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import the tests
    return ray_session


@pytest.fixture(scope="module")
def in_process_results(items):
    sink = Collector()
    InProcessExecutor().run(items, make_state, embed, sink, batch_size=3)
    return sink.results


@pytest.mark.slow
def test_ray_gives_the_in_process_results(ray_local, items, in_process_results):
    sink, seen = Collector(), []
    stats = RayExecutor(workers=2).run(items, make_state, embed, sink, batch_size=3, progress=seen.append)
    assert (stats.backend, stats.images, stats.batches, stats.retries) == ("ray", 11, 4, 0)
    assert sum(seen) == 11 and sorted(c[0] for c in sink.calls) == [0, 1, 2, 3]
    assert set(sink.results) == set(in_process_results)
    for image_id, r in sink.results.items():
        np.testing.assert_array_equal(r["feat"], in_process_results[image_id]["feat"])
    pids = {r["pid"] for r in sink.results.values()}
    assert os.getpid() not in pids and len(pids) == 2  # two actors did the work
    assert ray_local.is_initialized()  # an instance the caller started is left running


@pytest.mark.slow
def test_ray_worker_killed_mid_batch_is_retried_with_identical_results(ray_local, items, in_process_results,
                                                                       tmp_path):
    marker = tmp_path / "killed-once"
    skip = {items[0][0]}
    sink = Collector()
    fn = functools.partial(embed, kill_marker=str(marker), kill_batch=1)
    stats = RayExecutor(workers=2, max_retries=2).run(items, make_state, fn, sink, batch_size=3, skip=skip)
    assert marker.exists()  # the worker really died on its first attempt at batch 1
    killed_pid = int(marker.read_text())
    assert stats.retries >= 1 and stats.images == 10 and stats.skipped == 1
    assert sorted(c[0] for c in sink.calls) == [0, 1, 2, 3]  # each batch delivered exactly once
    assert set(sink.results) == {i for i, _ in items} - skip
    for image_id, r in sink.results.items():
        np.testing.assert_array_equal(r["feat"], in_process_results[image_id]["feat"])
    batch1 = [r for r in sink.results.values() if r["batch"] == 1]
    assert len(batch1) == 3 and killed_pid not in {r["pid"] for r in batch1}  # re-run on a fresh worker


@pytest.mark.slow
def test_ray_errors_exception_not_retried_and_dying_batch_gives_up(ray_local, items, tmp_path):
    with pytest.raises(ValueError, match="bad image"):
        RayExecutor(workers=2).run(items, make_state, functools.partial(embed, fail_on=items[4][0]), Collector(),
                                   batch_size=3)

    with pytest.raises(RuntimeError, match="model file missing"):  # a failing factory: not retried
        RayExecutor(workers=1).run(items[:3], broken_factory, embed, Collector(), batch_size=3)

    def always_die(state, batch):
        if batch.index == 0:
            os._exit(5)
        return [None] * len(batch)

    with pytest.raises(ExecutorError, match=r"batch 0 .* failed 2 times: its worker died"):
        RayExecutor(workers=1, max_retries=1).run(items[:3], make_state, always_die, lambda b, r: None,
                                                  batch_size=3)


JOIN = """
import json, os, sys
from featurelens.network.executor import RayExecutor
got = {}

def where():
    import ray
    return os.getpid(), ray.get_runtime_context().gcs_address

stats = RayExecutor(workers=2, address=sys.argv[1]).run(
    [(str(i), i) for i in range(10)], where, lambda w, b: [(p * p, *w) for p in b.payloads],
    lambda b, r: got.update(zip(b.ids, r)), batch_size=3)
print(json.dumps({"images": stats.images, "squares": [got[str(i)][0] for i in range(10)],
                  "pids": sorted({v[1] for v in got.values()}), "gcs": sorted({v[2] for v in got.values()}),
                  "driver": os.getpid()}))
"""


@pytest.mark.slow
def test_ray_joins_an_existing_cluster_by_address(tmp_path):
    """`ray start --head` in its own process group, then a driver that joins it with address=..."""
    import json
    import signal
    import socket
    import subprocess
    import time

    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.pathsep.join(sys.path)}
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:  # wait for the head's GCS port
            assert head.poll() is None, "ray start --head exited"
            with socket.socket() as c:
                if c.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.time() < deadline, "the Ray head did not start"
            time.sleep(0.5)
        out = subprocess.run([sys.executable, "-c", JOIN, f"127.0.0.1:{port}"], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["images"] == 10 and res["squares"] == [i * i for i in range(10)]
        assert len(res["pids"]) == 2 and res["driver"] not in res["pids"]
        assert len(res["gcs"]) == 1 and res["gcs"][0].endswith(f":{port}")  # workers of the cluster we started
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # our own head's process group only
        try:
            head.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
