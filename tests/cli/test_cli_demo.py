"""`featurelens demo`: the runner (sections, failures, outputs) and the real quick demo."""

from __future__ import annotations

import json
import sys
import types

import pytest

from featurelens.demo import DemoContext, DemoSection, SectionFailed, run_demo


@pytest.fixture
def fake_sections(monkeypatch):
    mod = types.ModuleType("fl_fake_demo_sections")

    def good(ctx: DemoContext) -> DemoSection:
        (ctx.out_dir / "good").mkdir()
        (ctx.out_dir / "good" / "a.txt").write_text("x")
        return DemoSection("A good <section>", "<p>all fine</p>", ["good/a.txt"], {"value": 3})

    def boom(ctx: DemoContext) -> DemoSection:
        raise ValueError("the <model> exploded")

    def partial(ctx: DemoContext) -> DemoSection:
        raise SectionFailed("one method failed", html="<p>partial results</p>", summary={"done": 1})

    def wrong(ctx: DemoContext) -> str:
        return "not a section"

    mod.good, mod.boom, mod.partial, mod.wrong = good, boom, partial, wrong
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def test_a_failing_section_is_an_error_box_and_a_nonzero_exit(fake_sections, tmp_path):
    entries = [f"{fake_sections}:{n}" for n in ("good", "boom", "partial", "wrong")] + [
        "no.such.module:section"
    ]
    logs: list[str] = []
    code = run_demo(tmp_path, quick=True, sections=entries, log=logs.append)
    assert code == 1
    html = (tmp_path / "index.html").read_text()
    assert "A good &lt;section&gt;" in html and "<p>all fine</p>" in html
    assert html.count('class="error"') == 4
    assert "the &lt;model&gt; exploded" in html and "<model>" not in html
    assert "<p>partial results</p>" in html
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["ok"] is False and summary["failed"] == entries[1:]
    status = [s["status"] for s in summary["sections"]]
    assert status == ["ok", "error", "error", "error", "error"]
    assert summary["sections"][0]["summary"] == {"value": 3} and summary["sections"][2]["summary"] == {
        "done": 1
    }
    assert any("exploded" in line for line in logs)


def test_all_good_sections_exit_zero(fake_sections, tmp_path):
    assert run_demo(tmp_path / "d", sections=[f"{fake_sections}:good"], log=lambda m: None) == 0
    assert json.loads((tmp_path / "d" / "demo.json").read_text())["ok"] is True


@pytest.mark.slow
def test_quick_demo_writes_a_readable_report(cli, tmp_path):
    from featurelens.methods import method_names

    out = tmp_path / "demo"
    r = cli("demo", "--quick", "--out", out)
    assert r.code == 0, r.err
    index = out / "index.html"
    assert str(index.resolve()) in r.out
    html = index.read_text()
    for text in (
        "espresso",
        "Egyptian Mau",
        "coffee",
        "chelsea",
        "Comparison grid",
        "data:image/jpeg;base64,",
    ):
        assert text in html, text
    for method in method_names():
        assert f"<b>{method}</b>" in html
    summary = json.loads((out / "demo.json").read_text())
    assert summary["ok"] and summary["quick"] and not summary["full"]
    assert "Fast mode" in html and "featurelens demo --full" in html
    cam = summary["sections"][0]
    assert cam["entry"] == "featurelens.report.demo_cam:section" and cam["status"] == "ok"
    assert cam["summary"]["modes"]["scorecam"] == "fast mode (top 48 channels)"
    assert cam["summary"]["methods"] == method_names() and not cam["summary"]["failed_methods"]
    assert cam["summary"]["photos"][0] == {
        **cam["summary"]["photos"][0],
        "photo": "coffee",
        "class": "espresso",
    }
    for f in cam["files"]:
        assert (out / f).is_file(), f
    assert "cam/comparison_grid.png" in cam["files"]
    net = next(s for s in summary["sections"] if s["entry"] == "featurelens.network.demo:section")
    assert net["status"] == "ok" and net["summary"]["layers"] == 2 and net["summary"]["images"] == 3
    assert net["summary"]["median_stability_ari"] is None  # not measured in the demo (it doubles clustering)
    assert "How firm are the cluster boundaries?" in html and "--stability 1" in html
    labels = next(s for s in summary["sections"] if s["entry"] == "featurelens.labels.demo:section")
    assert labels["status"] == "ok" and labels["summary"]["dataset"] == net["summary"]["dataset"]


def test_default_demo_uses_fast_modes_and_full_is_exact():
    from featurelens.methods import get_method, method_names
    from featurelens.report.demo_cam import _mode, demo_options

    assert demo_options("scorecam", full=False) == {"fast": True}
    assert get_method("scorecam", **demo_options("scorecam", full=False)).top_n == 48
    assert _mode("scorecam", full=False) == "fast mode (top 48 channels)"
    assert demo_options("gradcam", full=False) == {} and _mode("gradcam", full=False) == "exact"
    for m in ("sscam", "iscam"):  # Score-CAM variants: fewer channels and fewer samples
        method = get_method(m, **demo_options(m, full=False))
        assert (method.top_n, method.num_samples) == (12, 3)
        assert _mode(m, full=False) == "fast mode (top 12 channels, 3 samples)"
    for m in method_names():  # --full: every method exact
        assert demo_options(m, full=True) == {} and _mode(m, full=True) == "exact"


def test_demo_quick_and_full_exclude_each_other(cli, tmp_path):
    r = cli("demo", "--quick", "--full", "--out", tmp_path / "d")
    assert r.code == 2 and "not allowed with" in r.err


def test_explain_method_all_uses_fast_modes_unless_exact():
    from featurelens.cli.explain import all_method_options

    fast = all_method_options(["all"])
    assert fast["scorecam"] == {"fast": True} and fast["sscam"] == fast["iscam"] == {"top_n": 12, "num_samples": 3}
    assert "gradcam" not in fast
    assert all_method_options(["all"], exact=True) == {}
    assert all_method_options(["gradcam,scorecam"]) == {}  # only 'all' switches fast modes on
    assert "sscam" not in all_method_options(["all", "ss-cam"])  # named on its own: exact
