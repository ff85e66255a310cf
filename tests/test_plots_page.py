"""`dvc plots show` draws every plot offline: .dvc/config points DVC at .dvc/plots-page.html, which
holds vega, vega-lite and vega-embed inline (guie/plots_page.py), not behind a CDN."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from support import REPO, fresh_clone, run

from guie.layout import Layout
from guie.plots_page import VL_CONVERT, page

PAGE = Layout(REPO).plots_page


def test_dvc_is_pointed_at_the_committed_page_and_it_loads_nothing_from_outside():
    config = (REPO / ".dvc" / "config").read_text()
    assert re.search(r"^\s*html_template = plots-page.html$", config, re.M), config
    text = PAGE.read_text()
    assert "{plot_divs}" in text and "{scripts}" not in text  # {scripts}: DVC's CDN script tags
    assert not re.search(r"<script[^>]*\bsrc=", text), "the page loads a script from elsewhere"
    assert "window.vegaEmbed=" in text


def test_the_committed_page_is_what_guie_plots_page_writes():
    vl_convert = pytest.importorskip("vl_convert")
    from importlib.metadata import version

    if version("vl-convert-python") != VL_CONVERT:
        pytest.skip(f"vl-convert-python {version('vl-convert-python')} here; the page is {VL_CONVERT}'s")
    assert PAGE.read_text() == page(vl_convert.javascript_bundle()), "run `python -m guie.plots_page`"


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_headless_chromium_finds_every_plot_drawn(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    # the committed plots of a fresh clone (their files are in git: `cache: false`), as a user sees them
    root = fresh_clone(REPO, tmp_path / "clone")
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], root)
    index = tmp_path / "plots" / "index.html"
    source = index.read_text()
    ids = re.findall(r"vegaEmbed\('#([^']+)'", source)
    assert len(ids) >= 9, "the training curves (loss, lr, held-out mP@5 per stage), PCA variance, mP@5 by domain"
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # root in a container
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=30000",
            "--dump-dom",
            index.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    # each plot's div, up to the next plot's, holds vega's drawing (a canvas or svg of class "marks")
    starts = sorted((dom.find(f'id="{div}"'), div) for div in ids)
    assert all(at >= 0 for at, _ in starts), f"chromium's page lacks plots: {dom[-2000:]}"
    ends = [at for at, _ in starts[1:]] + [len(dom)]
    undrawn = [
        div
        for (at, div), end in zip(starts, ends, strict=True)
        if not re.search(r'<(canvas|svg)[^>]*class="marks"', dom[at:end])
    ]
    assert undrawn == [], f"plots vega did not draw: {undrawn}"
