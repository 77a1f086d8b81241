"""End to end in a real browser: `pareto ui` (a subprocess on 127.0.0.1) against a store filled by a small real
pipeline run, opened in headless Debian Chromium through Playwright. The chart and sliders render, a slider
moved with the keyboard renormalises the other, a question gets an answer, and screenshots of both pages are
saved under test-artifacts/ (gitignored) and checked to be real renders, not Streamlit's empty skeleton."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, _exe, free_port, stop_group, wait_http
from tests.test_ui import small_store

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
VIEWPORT = {"width": 1400, "height": 1600}  # tall: Streamlit scrolls an inner container, full_page does not help
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium "
                       "(apt-get install -y --no-install-recommends chromium); Playwright drives that browser "
                       "and never downloads its own"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")


@pytest.fixture(scope="module")
def ui_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    info = small_store(tmp_path_factory)
    port = free_port()
    log = tmp_path_factory.mktemp("ui-server") / "ui.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the flag must do the pointing
    with open(log, "wb") as out:
        proc = subprocess.Popen([_exe("pareto"), "ui", "--port", str(port), "--tracking-uri", info["uri"]],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_stcore/health", timeout=120)
        yield url
    finally:
        stop_group(proc)  # `pareto ui` and the streamlit server it started: our group only
        print(log.read_text()[-2000:])


def check_render(path: Path) -> None:
    """A real render: the viewport's size, and enough ink and colours (the skeleton is near-blank grey)."""
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[:2] == (VIEWPORT["height"], VIEWPORT["width"])
    ink = (image.min(axis=2) < 200).mean()  # share of pixels that are not white or light grey
    colours = len(np.unique(image[::4, ::4].reshape(-1, 3), axis=0))
    # Measured: a page still loading is blank (0 ink, 1 colour); these pages give ~1.5% ink, ~700 colours.
    assert ink > 0.005 and colours > 200, (ink, colours)


def test_explorer_renders_and_answers_in_chromium(ui_url: str) -> None:
    expect = sync_api.expect
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(240_000)  # the first run imports torch and reads the run on 2 busy cores
            page.goto(ui_url)
            page.wait_for_selector(".js-plotly-plot .main-svg")
            sliders = page.get_by_role("slider")
            expect(sliders).to_have_count(2)
            page.wait_for_function("() => document.body.innerText.includes('helpful 0.50 · concise 0.50')")
            expect(page.locator('[data-testid="stMetricValue"]')).to_have_count(4)  # HV, IGD, inner product, n.d.

            # A real user interaction: keyboard on the first slider; the other one follows on the simplex. One
            # key at a time, as a person would: each press reruns the page, which moves the other slider.
            sliders.first.focus()
            for step in range(1, 6):
                page.keyboard.press("ArrowRight")
                shown = f"helpful {0.5 + step / 100:.2f} · concise {0.5 - step / 100:.2f}"
                page.wait_for_function(f"() => document.body.innerText.includes('{shown}')")
            expect(sliders.nth(1)).to_have_value("0.45")

            page.get_by_role("button", name="Ask").click()
            page.wait_for_function("() => document.body.innerText.includes('answered by runs:/')")
            expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(1)  # the answer's scores
            expect(page.locator(".js-plotly-plot .legendtext", has_text="your answer")).to_have_count(1)
            page.wait_for_timeout(1000)  # let plotly finish its transition before the picture
            explore = ARTIFACTS / "ui-explore.png"
            page.screenshot(path=str(explore))

            page.get_by_text("Compare", exact=True).click()
            page.wait_for_function("() => document.body.innerText.includes('Compare fronts')")
            expect(page.locator(".js-plotly-plot")).to_have_count(2)  # the overlay and HV vs compute
            expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(1)
            page.wait_for_timeout(1500)
            compare = ARTIFACTS / "ui-compare.png"
            page.screenshot(path=str(compare))
        finally:
            browser.close()
    check_render(explore)
    check_render(compare)
