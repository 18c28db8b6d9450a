"""Average Drop / Increase in Confidence and the pointing games on constructed cases."""

from __future__ import annotations

import pytest
import torch
from metric_models import CountingModel, RegionMean

from featurelens.metrics import MetricError, class_score_fn
from featurelens.metrics.confidence import average_drop_increase, keep_explained
from featurelens.metrics.pointing import boxes_to_masks, energy_pointing_game, pointing_game


def test_average_drop_by_hand(region, positive_inputs):
    model = CountingModel(RegionMean(region))
    score = class_score_fn(model, torch.zeros(4, dtype=torch.long), kind="logit")
    maps = region.expand(4, 16, 16).clone()
    maps[1, 4, 8] = 0.5  # one pixel of the region half kept
    maps[2] = 0.0
    maps[2, 0, 0] = 1.0  # only a pixel outside the region kept
    maps[3] = region * 3.0 + 1.0  # region ×4 the rest: min-max scales it back to the region indicator
    res = average_drop_increase(score, positive_inputs, maps, batch_size=3)
    assert model.calls == 3  # 8 rows (4 full + 4 masked) in batches of 3
    # the same numbers by hand: Y = mean_region x0, O = mean_region (m01 · x0), AD = max(0, Y-O)/Y
    drops = []
    for i in range(4):
        m = maps[i] - maps[i].min()
        m = m / m.max()
        y = float((positive_inputs[i, 0] * region).sum() / region.sum())
        o = float((positive_inputs[i, 0] * m * region).sum() / region.sum())
        assert res.full[i].item() == pytest.approx(y, rel=1e-5)
        assert res.masked[i].item() == pytest.approx(o, rel=1e-5)
        drops.append(max(0.0, y - o) / y)
    assert res.average_drop == pytest.approx(100 * sum(drops) / 4, rel=1e-5)
    assert drops[0] == 0 and drops[2] == pytest.approx(1.0) and drops[3] == 0
    assert 0 < drops[1] < 0.05
    assert res.increase_in_confidence == 0


def test_increase_in_confidence_and_skip_of_non_positive(region, positive_inputs):
    inside = region.bool()

    def score(x, index):  # 1 + mean(region) - mean(outside): keeping only the region raises it
        return 1 + x[:, 0][:, inside].mean(1) - x[:, 0][:, ~inside].mean(1)

    res = average_drop_increase(score, positive_inputs, region.expand(4, 16, 16))
    assert res.increase.all() and res.increase_in_confidence == 100.0 and res.average_drop == 0.0
    full = torch.tensor([1.0, -1.0, 0.5, 0.0])
    res2 = average_drop_increase(score, positive_inputs, region.expand(4, 16, 16), full_scores=full)
    assert res2.skipped == 2 and torch.isnan(res2.drop[1]) and torch.isnan(res2.drop[3])


def test_keep_explained_is_input_times_map():
    x = torch.rand(2, 3, 5, 5)
    m = torch.rand(2, 5, 5)
    m[:, 0, 0], m[:, 0, 1] = 0.0, 1.0
    assert torch.allclose(keep_explained(x, m), x * m[:, None])


def test_pointing_game_synthetic_box():
    maps = torch.zeros(4, 20, 30)
    box = (10, 5, 16, 9)  # x0, y0, x1, y1: columns 10..15, rows 5..8
    maps[0, 6, 12] = 1.0  # inside
    maps[1, 2, 2] = 1.0  # far outside
    maps[2, 8, 15] = 1.0  # last pixel inside (exclusive bounds)
    maps[3, 9, 16] = 1.0  # just outside the corner
    res = pointing_game(maps, [box] * 4)
    assert res.hits.tolist() == [True, False, True, False]
    assert res.accuracy == 0.5
    assert res.peaks[0].tolist() == [6, 12]
    # tolerance: the corner pixel (distance sqrt 2) is a hit with 2 pixels, the far one is not
    assert pointing_game(maps, [box] * 4, tolerance=2).hits.tolist() == [True, False, True, True]
    # masks give the same answer as the box; several boxes count as their union
    mask = boxes_to_masks([box] * 4, (20, 30))
    assert pointing_game(maps, masks=mask).hits.tolist() == [True, False, True, False]
    assert pointing_game(maps, [[box, (0, 0, 4, 4)]] * 4).hits.tolist() == [True, True, True, False]


def test_energy_pointing_exact():
    maps = torch.zeros(2, 8, 8)
    maps[0, 2:4, 2:4] = 1.0  # 4 units inside
    maps[0, 6, 0:6] = 2.0  # 12 units outside
    maps[1] = -1.0  # negative values carry no energy
    maps[1, 3, 3] = 0.5
    e = energy_pointing_game(maps, [(2, 2, 4, 4), (2, 2, 4, 4)])
    assert e[0].item() == pytest.approx(4 / 16)
    assert e[1].item() == pytest.approx(1.0)
    assert energy_pointing_game(torch.zeros(1, 8, 8), [(0, 0, 2, 2)]).item() == 0.0


def test_pointing_bad_input():
    maps = torch.rand(2, 8, 8)
    with pytest.raises(MetricError, match="exactly one"):
        pointing_game(maps)
    with pytest.raises(MetricError, match="one box"):
        pointing_game(maps, [(0, 0, 2, 2)])
    with pytest.raises(MetricError, match="empty"):
        energy_pointing_game(maps, [(3, 3, 3, 5)] * 2)
