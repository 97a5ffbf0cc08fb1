"""The playground at ``/``, driven in a real headless Chromium against a real server: the
API key asked for, a split schedule shown step by step as the job runs, the image and
its timings, and a refused size shown beside its field."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from api_helpers import running_server
from PIL import Image
from playground_browser import browser, chromium, generate_split, open_page
from playwright.sync_api import expect


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--model", "tiny-random", "--precisions", "fp32,bf16", "--cores-per-worker", "1", "--api-key", "k"]
    with running_server(tmp_path_factory.mktemp("playground") / "server.log", args) as (_, base):
        yield base


@pytest.fixture(scope="module")
def chrome():
    found = chromium()
    if found is None:
        pytest.skip("no headless Chromium: make test-tools unpacks Debian's chromium-headless-shell into .tools/")
    with browser(*found) as launched:
        yield launched


def test_the_page_and_its_files_are_served_without_the_key(server):
    page = httpx.get(server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/playground/playground.js", "/playground/playground.css"):
        assert httpx.get(server + asset).status_code == 200, asset
    assert httpx.head(server + "/").status_code == 200
    refused = httpx.post(server + "/")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"


@pytest.mark.slow
def test_a_split_schedule_fills_the_strip_step_by_step_and_shows_the_image(server, chrome):
    page = open_page(chrome, server, api_key="k")
    strip = page.locator("#strip button")
    page.get_by_label("Steps", exact=True).fill("6")
    page.get_by_label("split: high at both ends, low between").check()
    page.get_by_label("High", exact=True).select_option("fp32")
    page.get_by_label("Low", exact=True).select_option("bf16")
    page.get_by_label("First", exact=True).fill("1")
    page.get_by_label("Last", exact=True).fill("2")
    planned = ["fp32", "bf16", "bf16", "bf16", "fp32", "fp32"]
    assert strip.all_inner_texts() == planned  # each step shows the UNet it will run at

    generate_split(page, "a red circle", "fp32", "bf16", first=1, last=2, steps=6)

    done = page.locator("#strip button[data-state=done]")
    expect(done).to_have_count(6)
    for i, precision in enumerate(planned):
        label = done.nth(i).get_attribute("aria-label")
        assert label.startswith(f"step {i + 1}: {precision}, timestep ") and label.endswith(" s"), label
        assert float(done.nth(i).inner_text()) > 0  # the step's seconds, drawn in its cell
    source = page.locator("#image").get_attribute("src")
    assert Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).size == (64, 64)
    seed = page.locator("#caption").inner_text().split()[1]
    assert page.get_by_role("link", name="Download PNG").get_attribute("download") == f"mixdiff-{seed}.png"
    timings = page.locator("#timings").inner_text()
    for phase in ("text encoder", "denoising steps", "3 at fp32", "3 at bf16", "VAE decode", "total"):
        assert phase in timings, timings
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()

    page.get_by_role("button", name="reuse last seed").click()
    assert page.get_by_label("Seed").input_value() == seed


@pytest.mark.slow
def test_enter_on_a_step_makes_the_schedule_per_step(server, chrome):
    page = open_page(chrome, server, api_key="k")
    page.get_by_label("Prompt", exact=True).fill("a green square")
    page.get_by_label("Steps", exact=True).fill("3")
    page.get_by_label("one precision").check()
    page.get_by_label("Precision", exact=True).select_option("bf16")
    first = page.get_by_role("button", name="step 1: bf16")
    first.focus()
    page.keyboard.press("ArrowRight")  # one tab stop; arrows move along the strip
    page.keyboard.press("Enter")
    expect(page.get_by_label("per step")).to_be_checked()
    assert page.locator("#strip button").all_inner_texts() == ["bf16", "fp32", "bf16"]
    with page.expect_request("**/v1/jobs") as sent:
        page.get_by_role("button", name="Generate").click()
    assert sent.value.post_data_json["precision"] == ["bf16", "fp32", "bf16"]
    assert "steps" not in sent.value.post_data_json  # the list sets the step count
    expect(page.locator("#strip button[data-state=done]")).to_have_count(3)


@pytest.mark.slow
def test_a_refused_size_is_shown_beside_its_field_in_a_narrow_window(server, chrome):
    page = open_page(chrome, server, api_key="k", width=380)
    page.get_by_label("Prompt", exact=True).fill("a blue square")
    page.get_by_label("Width").fill("100")
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#width-error")
    expect(error).to_contain_text("width")
    expect(error).to_contain_text("multiple of 8")
    expect(page.get_by_label("Width")).to_have_attribute("aria-invalid", "true")
    assert page.evaluate("document.documentElement.scrollWidth") <= 380  # nothing overflows sideways
    page.get_by_label("Width").fill("64")
    expect(error).to_be_empty()
    expect(page.get_by_label("Width")).not_to_have_attribute("aria-invalid", "true")
