"""ROAD (noisy linear imputation, MoRF/LeRF) and the confidence change of image × map, against explicit formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_models import RegionMean

from featurelens.cli.main import main
from featurelens.metrics import MetricError, class_score_fn, evaluate_maps
from featurelens.metrics.road import confidence_change, noisy_linear_impute, road

WEIGHTS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6, (0, 1): 1 / 6, (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}


def explicit_impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Dense system, one equation per removed pixel, written out with loops and solved with numpy."""
    c, h, w = image.shape
    unknown = [(y, x) for y in range(h) for x in range(w) if removed[y, x]]
    pos = {p: i for i, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), c))
    for i, (y, x) in enumerate(unknown):
        for (dy, dx), wt in WEIGHTS.items():
            ny, nx = y + dy, x + dx
            if not (0 <= ny < h and 0 <= nx < w):
                continue
            a[i, i] += wt
            if removed[ny, nx]:
                a[i, pos[(ny, nx)]] -= wt
            else:
                b[i] += wt * image[:, ny, nx]
    sol = np.linalg.solve(a, b)
    out = image.copy()
    for i, (y, x) in enumerate(unknown):
        out[:, y, x] = sol[i]
    return out


def test_imputation_solves_its_linear_system():
    torch.manual_seed(0)
    img = torch.randn(3, 6, 7, dtype=torch.float64)
    removed = torch.rand(6, 7) < 0.6
    removed[0, 0] = removed[5, 6] = True  # corners: fewer neighbours
    got = noisy_linear_impute(img, removed, noise=0.0)
    expected = explicit_impute(img.numpy(), removed.numpy())
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    assert torch.equal(got[:, ~removed], img[:, ~removed])  # kept pixels untouched
    # each removed pixel is the weighted mean of its in-image neighbours
    y, x = 0, 0
    nb = [((dy, dx), w) for (dy, dx), w in WEIGHTS.items() if 0 <= y + dy < 6 and 0 <= x + dx < 7]
    mean = sum(w * got[:, y + dy, x + dx] for (dy, dx), w in nb) / sum(w for _, w in nb)
    assert torch.allclose(got[:, y, x], mean, atol=1e-10)


def test_imputation_noise_only_on_removed_pixels():
    torch.manual_seed(1)
    img = torch.randn(3, 20, 20)
    removed = torch.zeros(20, 20, dtype=torch.bool)
    removed[5:15, 4:16] = True
    clean = noisy_linear_impute(img, removed, noise=0.0)
    noisy = noisy_linear_impute(img, removed, noise=0.05, generator=torch.Generator().manual_seed(0))
    diff = noisy - clean
    assert torch.equal(diff[:, ~removed], torch.zeros_like(diff[:, ~removed]))
    assert 0.04 < float(diff[:, removed].std()) < 0.06
    with pytest.raises(MetricError):
        noisy_linear_impute(img, torch.ones(20, 20, dtype=torch.bool))


def test_road_morf_lerf_against_an_explicit_loop(region, positive_inputs):
    model = RegionMean(region)
    score = class_score_fn(model, torch.zeros(4, dtype=torch.long), kind="logit")
    torch.manual_seed(2)
    maps = torch.rand(4, 16, 16) + 2 * region
    percentiles = (20, 50, 80)
    res = road(score, positive_inputs, maps, percentiles=percentiles, noise=0.0)
    for b in range(4):
        full = float(model(positive_inputs[b : b + 1])[0, 0])
        order = np.argsort(-maps[b].flatten().numpy(), kind="stable")
        for j, p in enumerate(percentiles):
            k = round(p / 100 * 256)
            for mode, chosen in (("morf", order[:k]), ("lerf", order[256 - k :])):
                removed = np.zeros(256, dtype=bool)
                removed[chosen] = True
                imputed = explicit_impute(positive_inputs[b].double().numpy(), removed.reshape(16, 16))
                s = float(model(torch.from_numpy(imputed).float()[None])[0, 0])
                got = (res.morf if mode == "morf" else res.lerf)[b, j]
                assert float(got) == pytest.approx(s - full, abs=1e-4), (b, p, mode)
    assert torch.allclose(res.combined, (res.lerf.mean(1) - res.morf.mean(1)) / 2)


class RegionTexture(torch.nn.Module):
    """Logit 0: the variance of channel 0 inside a region (texture that imputation smooths away)."""

    def __init__(self, region):
        super().__init__()
        self.region = region

    def forward(self, x):
        r = self.region
        mean = (x[:, 0] * r).sum(dim=(1, 2)) / r.sum()
        var = (((x[:, 0] - mean[:, None, None]) ** 2) * r).sum(dim=(1, 2)) / r.sum()
        return torch.stack([var, torch.zeros_like(var)], 1)


def test_road_ranks_the_map_of_the_region_first(region, positive_inputs):
    score = class_score_fn(RegionTexture(region), torch.zeros(4, dtype=torch.long), kind="logit")
    ideal = region.expand(4, 16, 16) + 0.01 * torch.rand(4, 16, 16)
    good = road(score, positive_inputs, ideal, percentiles=(10, 20))
    bad = road(score, positive_inputs, -ideal, percentiles=(10, 20))
    assert bool((good.morf_mean < bad.morf_mean).all()) and bool((good.lerf_mean > bad.lerf_mean).all())


def test_confidence_change_is_score_of_image_times_map(region, positive_inputs):
    model = RegionMean(region)
    score = class_score_fn(model, torch.zeros(4, dtype=torch.long), kind="logit")
    maps = torch.rand(4, 16, 16)
    got = confidence_change(score, positive_inputs, maps)
    for b in range(4):
        m = (maps[b] - maps[b].min()) / (maps[b].max() - maps[b].min())
        expected = float(model((positive_inputs[b] * m)[None])[0, 0] - model(positive_inputs[b : b + 1])[0, 0])
        assert float(got[b]) == pytest.approx(expected, abs=1e-5)


def test_evaluate_table_has_road_and_confidence_change(region, positive_inputs):
    score = class_score_fn(RegionTexture(region), torch.zeros(4, dtype=torch.long), kind="logit")
    ideal = region.expand(4, 16, 16).clone() + 0.01 * torch.rand(4, 16, 16)
    table = evaluate_maps(score, positive_inputs, {"ideal": ideal, "reverse": -ideal}, ["road", "cc"], road_percentiles=(10, 20))
    assert table.columns == ["road_morf", "road_lerf", "road_combined", "confidence_change"]
    assert table.best("road_combined") == "ideal" and table.best("road_morf") == "ideal"
    assert table.value("ideal", "confidence_change") > table.value("reverse", "confidence_change")


@pytest.mark.slow
def test_evaluate_cli_with_road(photos, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    photos["coffee"].save(folder / "coffee.jpg")
    code = main(
        ["evaluate", "--images", str(folder), "--metrics", "road,confidence-change", "--road-percentiles", "50",
         "--out", str(tmp_path / "out")]
    )
    assert code == 0
    text = (tmp_path / "out" / "results.csv").read_text()
    assert "road_morf" in text and "confidence_change" in text
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--images", str(folder), "--metrics", "road", "--road-percentiles", "0,50"])
    assert err.value.code == 2 and "strictly between 0 and 100" in capsys.readouterr().err
