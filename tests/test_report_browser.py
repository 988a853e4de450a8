"""report.html in a real browser: headless Chromium loads the page, a probe script measures every image
(loaded, natural and rendered size) into the DOM, and a screenshot shows it renders."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stats_fixtures import planted_zoo

from pipeline.stats.options import StatsOptions
from pipeline.stats.run import run_stats

WINDOW = (1280, 1600)
MIN_WIDTH = 500
"""Rendered width (CSS px) every figure needs at a 1280 px window to be readable."""
MIN_SCALE = 0.9
"""Rendered / natural width: figures are drawn at the page's width, so the browser barely shrinks them."""

PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images].map(i => { const b = i.getBoundingClientRect();
    return {alt: i.alt, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight], shown: [b.width, b.height]}; });
  const headline = document.querySelector('table.headline');
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({images, headline_rows: headline ? headline.tBodies[0].rows.length : -1,
    headline_columns: headline ? [...headline.tHead.rows[0].cells].map(c => c.textContent) : [],
    first_section: document.querySelector('section h2').textContent});
  document.body.appendChild(out); });</script>"""


def chromium() -> str:
    """The Chromium binary, or skip: make test / .ci/run install Debian's chromium when running as root."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium is not installed and could not be installed here (as root, `make test` runs "
                "`apt-get install chromium`; elsewhere: sudo apt-get install chromium)")


def headless(binary: str, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run (no sandbox: CI containers run as root)."""
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={WINDOW[0]},{WINDOW[1]}", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    binary = chromium()
    root = tmp_path_factory.mktemp("browser") / "ds"
    planted_zoo(root, n_per_side=4, datasets=("cifar10", "cifar100"))
    out = tmp_path_factory.mktemp("browser_report")
    run_stats(str(root), str(out), StatsOptions(permutations=19))
    probed = out / "probed.html"
    probed.write_text((out / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = headless(binary, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"no probe output from Chromium: {dom.stderr[-2000:]}"
    shot = out / "shot.png"
    headless(binary, f"--screenshot={shot}", (out / "report.html").as_uri())
    return out, json.loads(html.unescape(found.group(1))), shot


def test_no_broken_images(page: tuple) -> None:
    out, probe, _ = page
    images = probe["images"]
    assert len(images) == len(list((out / "figures").iterdir())) == 9
    broken = [i["alt"][:40] for i in images if not i["complete"] or min(i["natural"]) == 0]
    assert broken == []


def test_every_figure_is_readable(page: tuple) -> None:
    _, probe, _ = page
    small = [(i["alt"][:40], i["shown"], i["natural"]) for i in probe["images"]
             if i["shown"][0] < MIN_WIDTH or i["shown"][0] < MIN_SCALE * i["natural"][0]]
    assert small == []
    gallery = next(i for i in probe["images"] if i["alt"].startswith("First-layer filters"))
    assert gallery["shown"][0] >= 1000  # a pair of 8-tile mosaics across the page: tiles of about 50 px


def test_the_headline_table_opens_the_report(page: tuple) -> None:
    _, probe, shot = page
    assert probe["first_section"] == "At a glance"
    assert probe["headline_rows"] == 2 * 3  # two datasets x three metrics
    assert probe["headline_columns"][:4] == ["dataset", "metric", "paper", "direction"]
    assert "verdict" in probe["headline_columns"]
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (WINDOW[1], WINDOW[0])
    assert (image < 128).mean() > 0.005  # text and tables drawn, not a blank page
