"""Drive the `ris serve` web page in a real browser (Playwright on Debian's `chromium` package) as a person would:
pick a photo, wait for the result grid, click a result to search with it. Used by the tests, and by
`make serve-screenshot` for the README's screenshot (`python tests/browser.py PHOTO SCREENSHOT`: it starts
`ris serve` on the pipeline's cell, searches, and stops it)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def chromium_path() -> str | None:
    """Debian's chromium (Playwright's own browser download cannot work offline)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def search_in_browser(url: str, photo: Path, screenshot: Path, *, results: int = 12) -> dict:
    """Open the page, search with ``photo``, screenshot the grid, then click the fourth result and wait for its own
    search; return what the page showed (result ids and captions of both searches)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("chromium is not installed: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.goto(url)
            page.fill("#k", str(results))
            page.set_input_files("#file", str(photo))
            page.wait_for_selector(".hit", timeout=60_000)
            first = _shown(page)
            page.wait_for_function("[...document.images].every(image => image.complete)", timeout=60_000)
            page.screenshot(path=str(screenshot), full_page=True)
            clicked = page.locator(".hit").nth(3)
            clicked_id = clicked.get_attribute("data-id")
            clicked.click()
            page.wait_for_function(
                "id => document.querySelector('#query').textContent.includes(`collection image ${id} `)",
                arg=clicked_id, timeout=60_000)
            page.wait_for_function("() => !document.querySelector('#status').textContent.startsWith('searching')",
                                   timeout=60_000)
            second = _shown(page)
            return {"first": first, "clicked_id": int(clicked_id), "second": second,
                    "status": page.text_content("#status")}
        finally:
            browser.close()


def _shown(page) -> dict:  # type: ignore[no-untyped-def]
    cards = page.locator(".hit")
    return {"ids": [int(cards.nth(i).get_attribute("data-id")) for i in range(cards.count())],
            "captions": [cards.nth(i).text_content() for i in range(cards.count())]}


if __name__ == "__main__":
    import subprocess

    from ris.bench.serve import wait_until_up

    port = 8766
    server = subprocess.Popen([sys.executable, "-m", "ris.cli", "serve", "--port", str(port)])
    try:
        wait_until_up(f"http://127.0.0.1:{port}", server)
        shown = search_in_browser(f"http://127.0.0.1:{port}", Path(sys.argv[1]), Path(sys.argv[2]))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(shown["status"])
    print(f"first search: {shown['first']['captions'][:3]}; clicked {shown['clicked_id']}: "
          f"{shown['second']['captions'][:3]}")
