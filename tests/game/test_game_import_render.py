"""`game import` stores each map once at feature resolution; its reveal steps and overlay are rendered when
served, equal to the renderer's rule applied to the bundle's own map and the campaign's photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from featurelens.game import store
from featurelens.game.db import Database, make_engine, migrate
from featurelens.game.masks import REVEAL_Q, reveal
from featurelens.game.models import Cluster, ClusterAsset
from featurelens.network.bundle import load_bundle
from featurelens.network.render import image_map, overlay_image


def _decode(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB")).astype(int)


@pytest.fixture
def imported(tmp_path, game_bundle):
    engine = make_engine(str(tmp_path / "g.sqlite3"))
    migrate(engine)
    db = Database(engine)
    summary = store.import_bundle(db, game_bundle, "render")
    yield db, summary
    engine.dispose()


def test_import_stores_one_map_per_cluster_and_renders_served_steps(imported, game_bundle):
    db, summary = imported
    bundle = load_bundle(game_bundle)
    assert summary.images == len(bundle.images) and summary.maps == len(bundle.clusters())
    hasher = store.PasswordHasher(time_cost=1, memory_cost=8192)
    pid = store.create_player(db, hasher, "render player", "long password")
    rnd = store.next_round(db, pid, "render", gold_rate=0)
    with db.read() as s:
        kinds = s.scalars(select(ClusterAsset.kind)).all()
        assert set(kinds) == {"map"} and len(kinds) == summary.maps
        cl = s.scalar(select(Cluster).where(Cluster.cluster_key == rnd.cluster_id))
        photo = _decode(bytes(cl.image.photo)).astype(np.uint8)
    expected_map = image_map(bundle.load_map(bundle.cluster(rnd.cluster_id)), photo.shape[:2])
    served = _decode(store.asset(db, pid, rnd.id, "r0"))
    ref = reveal(photo, expected_map, REVEAL_Q[0])
    # the served JPEG against the reference rendering (JPEG noise only)
    assert np.abs(served - ref.astype(int)).mean() < 2.0
    with pytest.raises(store.NotFound):
        store.asset(db, pid, rnd.id, "r3")  # not revealed yet: rendering on demand keeps the rule
    with pytest.raises(store.NotFound):
        store.asset(db, pid, rnd.id, "overlay")
    store.finish_round(db, pid, rnd.id, guessed_class=None, labels=["fur"], idempotency_key="k" * 10)
    for i, q in enumerate(REVEAL_Q):
        got = _decode(store.asset(db, pid, rnd.id, f"r{i}"))
        assert np.abs(got - reveal(photo, expected_map, q).astype(int)).mean() < 2.0
    ov = _decode(store.asset(db, pid, rnd.id, "overlay"))
    assert np.abs(ov - overlay_image(photo, expected_map).astype(int)).mean() < 2.0
    with pytest.raises(store.NotFound):
        store.asset(db, pid, rnd.id, f"r{len(REVEAL_Q)}")


def test_same_content_is_refused_through_the_bundle_api(imported, game_bundle):
    db, _ = imported
    with pytest.raises(store.Conflict, match="already imported"):
        store.import_bundle(db, game_bundle, "again")


def test_a_sharded_version_3_bundle_imports_and_renders(imported, game_bundle, tmp_path):
    from featurelens.network.bundle import upgrade_bundle

    db, _ = imported
    v3 = upgrade_bundle(game_bundle, tmp_path / "v3")
    summary = store.import_bundle(db, v3.root, "v3")
    assert summary.images == len(v3.images) and summary.maps == len(v3.clusters())
    pid = store.create_player(db, store.PasswordHasher(time_cost=1, memory_cost=8192), "v3 player", "long password")
    rnd = store.next_round(db, pid, "v3", gold_rate=0)
    with db.read() as s:
        cl = s.scalar(select(Cluster).where(Cluster.cluster_key == rnd.cluster_id))
        photo = _decode(bytes(cl.image.photo)).astype(np.uint8)
    expected_map = image_map(v3.load_map(v3.cluster(rnd.cluster_id)), photo.shape[:2])
    served = _decode(store.asset(db, pid, rnd.id, "r0"))
    assert np.abs(served - reveal(photo, expected_map, REVEAL_Q[0]).astype(int)).mean() < 2.0


def test_a_worker_loads_the_renderer_at_start_not_on_its_first_image_request(tmp_path):
    """The first render used to import torch and the map rule on a request thread (about 1.7 s holding the
    GIL: every request of that worker waited). A fresh worker process built by ``app_from_env`` has them
    loaded before it serves, and renders with one torch thread."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import featurelens.game.app as app\n"
        "before = 'featurelens.network.render' in sys.modules\n"
        "app.app_from_env()\n"
        "import torch\n"
        "print(before, 'featurelens.network.render' in sys.modules, 'featurelens.game.masks' in sys.modules,"
        " torch.get_num_threads())\n"
    )
    env = {**os.environ, "FEATURELENS_GAME_DATABASE_URL": str(tmp_path / "w.sqlite3")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "True", "1"]
