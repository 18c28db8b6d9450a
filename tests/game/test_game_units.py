"""Reference tests of the reveal masks and of the scoring rules, plus the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from featurelens.game.masks import REVEAL_Q, reveal, soft_mask, top_q_mask
from featurelens.game.scoring import GUESS_POINTS, ExactMatcher, LemmaMatcher, guess_points
from featurelens.game.store import EXPORT_COLUMNS


def _slow_top_q(m: np.ndarray, q: float) -> np.ndarray:
    """Explicit reference: walk the pixels from the largest value down (ties by index) and take k."""
    k = max(1, round(q / 100 * m.size))
    items = sorted(((-float(v), i) for i, v in enumerate(m.ravel())))
    out = np.zeros(m.size, dtype=bool)
    for _, i in items[:k]:
        out[i] = True
    return out.reshape(m.shape)


@pytest.mark.parametrize("q", REVEAL_Q)
def test_top_q_mask_matches_reference(q):
    rng = np.random.default_rng(0)
    m = rng.random((37, 41)).astype(np.float32)
    m[5:9, 5:9] = 0.5  # ties
    mask = top_q_mask(m, q)
    assert np.array_equal(mask, _slow_top_q(m, q))
    assert mask.sum() == max(1, round(q / 100 * m.size))
    assert m[mask].min() >= m[~mask].max()


def test_reveal_steps_grow_and_soft_mask_has_a_feathered_edge():
    yy, xx = np.mgrid[0:100, 0:100]
    m = np.exp(-((yy - 30) ** 2 + (xx - 60) ** 2) / 300.0)
    masks = [top_q_mask(m, q) for q in REVEAL_Q]
    for a, b in itertools.pairwise(masks):
        assert np.all(b[a])  # each step reveals a superset of the previous one
    s = soft_mask(m, 8.0)
    hard = masks[2]
    assert s.min() >= 0 and s.max() <= 1
    assert s[hard].mean() > 0.9  # the region itself is (almost) fully visible
    edge = (s > 0.02) & (s < 0.98) & ~hard
    assert edge.sum() > 0  # a soft fringe outside the hard region
    far = np.zeros_like(hard)
    far[90:, :10] = True
    assert s[far].max() == 0
    photo = np.full((100, 100, 3), 200, np.uint8)
    out = reveal(photo, m, 8.0)
    assert out[30, 60].tolist() == [200, 200, 200] and out[95, 5].tolist() == [0, 0, 0]


def test_top_q_mask_rejects_bad_input():
    with pytest.raises(ValueError):
        top_q_mask(np.zeros((3, 3, 3)), 5)
    with pytest.raises(ValueError):
        top_q_mask(np.zeros((3, 3)), 0)


def test_guess_points_reward_fewer_reveals():
    assert [guess_points(True, s) for s in range(6)] == list(GUESS_POINTS)
    assert all(a > b for a, b in itertools.pairwise(GUESS_POINTS))
    assert guess_points(False, 0) == 0


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Pointed ears", "pointed ear", True),
    ("ears pointed", "the pointed ears", True),
    ("striped fur", "Stripes of fur", False),  # "striped" is an adjective only: it stays itself
    ("wheels", "a wheel", True),
    ("running legs", "legs run", True),
    ("fur", "feather", False),
    ("the", "a", False),  # stop words only: never agree
])
def test_lemma_matcher(a, b, same):
    assert LemmaMatcher().agree(a, b) is same


def test_exact_matcher():
    assert ExactMatcher().agree("Red  Wheel", "red wheel") and not ExactMatcher().agree("wheel", "wheels")


def test_cli_import_export_progress(tmp_path, game_bundle, capsys):
    from featurelens.cli.main import main
    from featurelens.game import store
    from featurelens.game.db import Database, make_engine

    db_path = tmp_path / "cli.sqlite3"
    gold = tmp_path / "gold.json"
    from featurelens.network.bundle import load_bundle

    cid = load_bundle(game_bundle).images[0].clusters[0].id
    gold.write_text(json.dumps({cid: ["fur"]}))
    assert main(["game", "import", str(game_bundle), "--campaign", "cli", "--database-url", str(db_path),
                 "--gold", str(gold)]) == 0
    assert "24 maps (1 gold)" in capsys.readouterr().out
    assert main(["game", "import", str(game_bundle), "--campaign", "cli", "--database-url", str(db_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    db = Database(make_engine(str(db_path)))
    hasher = store.PasswordHasher(time_cost=1, memory_cost=8192)
    pid = store.create_player(db, hasher, "cli player", "long password")
    rnd = store.next_round(db, pid, "cli", gold_rate=0)
    assert rnd is not None
    store.finish_round(db, pid, rnd.id, guessed_class=None, labels=["a, b", 'quote "x"'],
                       idempotency_key="k" * 10)
    out = tmp_path / "labels.csv"
    assert main(["game", "export", "--campaign", "cli", "--out", str(out), "--database-url", str(db_path)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split(",")[:3] == ["campaign", "player", "image_id"] and len(lines) == 3
    assert '"quote ""x"""' in lines[2]
    assert main(["game", "export", "--campaign", "cli", "--out", str(tmp_path / "x.txt"),
                 "--database-url", str(db_path)]) == 2
    assert main(["game", "progress", "--campaign", "cli", "--database-url", str(db_path)]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["labels"] == 2
    db.dispose()


@pytest.mark.slow
def test_cli_through_a_running_servers_admin_api(live_server, fresh_bundle, tmp_path, capsys, monkeypatch):
    from game_helpers import ADMIN

    from featurelens.cli.main import main

    monkeypatch.delenv("FEATURELENS_ADMIN_TOKEN", raising=False)
    assert main(["game", "progress", "--campaign", "test", "--server", live_server]) == 2
    assert "needs the admin token" in capsys.readouterr().err
    assert main(["game", "progress", "--campaign", "test", "--server", live_server, "--admin-token", "bad"]) == 2
    assert "401" in capsys.readouterr().err
    monkeypatch.setenv("FEATURELENS_ADMIN_TOKEN", ADMIN)
    assert main(["game", "import", str(fresh_bundle), "--campaign", "remote", "--server", live_server]) == 0
    assert "24 maps" in capsys.readouterr().out
    assert main(["game", "progress", "--campaign", "remote", "--server", live_server]) == 0
    assert json.loads(capsys.readouterr().out)["maps"] == 24
    out = tmp_path / "remote.csv"
    assert main(["game", "export", "--campaign", "remote", "--out", str(out), "--server", live_server]) == 0
    assert out.read_text().splitlines() == [",".join(EXPORT_COLUMNS)]  # no answers yet: the header only
