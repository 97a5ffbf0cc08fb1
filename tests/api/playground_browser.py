"""A headless Chromium for the playground: Debian's ``chromium-headless-shell``, unpacked
into ``.tools/chromium`` by ``make test-tools`` (or installed on the system), driven by
Playwright.

Run as a script, it takes the README's screenshot: ``python tests/api/playground_browser.py
docs/playground.png`` starts ``mixdiff serve`` on the embedded model, generates one image
with a split schedule in the page and saves the page.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from api_helpers import debian_tool, running_server
from playwright.sync_api import Browser, Page, expect, sync_playwright


def chromium() -> tuple[str, dict[str, str]] | None:
    """The headless Chromium's path and the environment it runs in, or None if there is none."""
    return debian_tool("chromium", "usr/lib/chromium/chromium-headless-shell", "chromium-headless-shell", "chromium")


@contextmanager
def browser(executable: str, env: dict[str, str]):
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start
        launched = playwright.chromium.launch(executable_path=executable, env=env, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: Browser, base: str, api_key: str | None = None, width: int = 1100) -> Page:
    """The playground at ``base``, its form filled from the model (after the API key, if asked)."""
    page = browser.new_page(viewport={"width": width, "height": 800})
    page.goto(base + "/")
    if api_key is not None:
        key = page.get_by_label("API key")
        expect(key).to_be_visible(timeout=60_000)
        key.fill(api_key)
        key.press("Enter")
        key.blur()
    expect(page.get_by_role("button", name="Generate")).to_be_enabled(timeout=60_000)
    return page


def generate_split(page: Page, prompt: str, high: str, low: str, first: int, last: int, steps: int) -> None:
    """Type a prompt, pick the paper's split schedule, generate, and wait for the image."""
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Steps", exact=True).fill(str(steps))
    page.get_by_label("split: high at both ends, low between").check()
    page.get_by_label("High", exact=True).select_option(high)
    page.get_by_label("Low", exact=True).select_option(low)
    page.get_by_label("First", exact=True).fill(str(first))
    page.get_by_label("Last", exact=True).fill(str(last))
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#image")).to_be_visible(timeout=120_000)


def _screenshot(out: Path) -> None:
    found = chromium()
    if found is None:
        sys.exit("no headless Chromium: run make test-tools")
    log = out.with_suffix(".server.log")
    with running_server(log, ["--cores-per-worker", "2"]) as (_, base), browser(*found) as launched:
        page = open_page(launched, base, width=1000)
        page.get_by_label("random").uncheck()
        page.get_by_label("Seed").fill("7")
        generate_split(page, "a red circle on a blue background", "bf16", "int8", first=5, last=5, steps=30)
        page.screenshot(path=str(out), full_page=True)
    log.unlink()
    print(f"wrote {out}")


if __name__ == "__main__":
    _screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/playground.png"))
