"""Debian's Chromium driven by Playwright (no browser download: executable_path is fixed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@contextmanager
def chromium_page() -> Iterator[object]:
    """A fresh headless page; skipped outside CI when Chromium or Playwright is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright not installed")
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (scripts/install-system-deps.sh installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def drawn_chart(page, chart_id: str) -> dict[str, object]:  # noqa: ANN001 - a Playwright page
    """Wait until the console chart ``#chart_id`` (templates/_chart.html, static/charts.js)
    has drawn, then what uPlot drew: points and series from the data it was given, its axes,
    canvases, legend text and vertical markers."""
    page.wait_for_selector(f"#{chart_id}[data-rendered=true]")
    return page.evaluate("""id => {
        const el = document.getElementById(id);
        const legend = el.querySelector('.u-legend');
        return {points: Number(el.dataset.points), series: Number(el.dataset.series),
                markers: Number(el.dataset.markers), axes: el.querySelectorAll('.u-axis').length,
                canvases: el.querySelectorAll('canvas').length,
                legend: legend ? legend.innerText : ''};
    }""", chart_id)


AXE = Path(__file__).parents[1] / "console" / "vendor" / "axe.min.js"


def serious_axe_violations(page) -> list[str]:  # noqa: ANN001 - a Playwright page
    """axe-core (vendored for the tests) run on the page as it is: its serious and critical
    violations, one line each (rule, impact, first element)."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    assert result["passes"], "axe-core checked nothing"
    return [f"{v['id']} ({v['impact']}): {v['nodes'][0]['target']}" for v in result["violations"]
            if v["impact"] in ("serious", "critical")]
