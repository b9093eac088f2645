"""Screenshot the MLflow UI's runs table of a `ris run -m` sweep, for the README (`make mlflow-screenshot`):
``python tests/mlflow_ui.py http://127.0.0.1:5000 reports/mlflow/sweep.png``, with `mlflow ui` already serving.
Playwright drives Debian's chromium (tests/browser.py); MLflow 3.17's page, selectors by visible text."""

from __future__ import annotations

import sys
import time
import urllib.parse

import httpx
from browser import chromium_path

SWEEP_FILTER = "tags.source = 'hydra' and tags.rerank = 'none'"
# Attributes shown by default are switched off to make room; then the metrics and the param that differ.
COLUMNS = ("Dataset", "Source", "Models", "map_at_r", "precision_at_4", "latency_p50_us", "qps", "vector_dim",
           "reduce.dim")


def screenshot_runs(base: str, out: str) -> None:
    from playwright.sync_api import sync_playwright

    experiment = httpx.get(f"{base}/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": "ris"}).json()["experiment"]["experiment_id"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1800, "height": 520})
        page.goto(f"{base}/#/experiments/{experiment}/runs?searchFilter={urllib.parse.quote(SWEEP_FILTER)}")
        page.get_by_role("button", name="Columns").first.wait_for(timeout=60_000)
        time.sleep(3)  # the table fills in after the page frame
        close = page.get_by_role("button", name="Close")  # MLflow's assistant panel, open on first visit
        if close.count():
            close.first.click()
        page.get_by_role("button", name="Columns").first.click()
        menu = page.locator("[role=dialog], [role=menu], [role=listbox]").first
        for name in COLUMNS:
            menu.get_by_text(name, exact=True).first.click()
            time.sleep(0.3)
        page.keyboard.press("Escape")
        time.sleep(2)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    screenshot_runs(sys.argv[1], sys.argv[2])
