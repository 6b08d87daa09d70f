"""The playground in a real headless Chromium (Debian's, driven by Playwright) against a live server."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from tests.conftest import decode_png
from vary.testing import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("VARY_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
WAIT_MS = 60_000

if CHROMIUM is None and not os.environ.get("VARY_REQUIRE_BROWSER"):
    pytest.skip("no system Chromium (apt install chromium); .ci/run installs it", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None, "VARY_REQUIRE_BROWSER is set but no chromium is installed"
    with sync_playwright() as playwright:
        # The flags keep a headless Chromium from reaching for Google's services on a closed network.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture()
def page(browser: Browser, server: ServerProcess) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.base_url + "/")
    yield page
    context.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def save_key(page: Page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#key-form button")
    expect(page.locator("#key-status")).to_have_text("Saved.")


def test_a_non_square_jpeg_to_three_variations_downloaded_and_varied_again(
    page: Page, api_key: str, tmp_path: Path
) -> None:
    save_key(page, api_key)
    expect(page.locator("#model option[value='tiny-random']")).to_have_count(1)  # the models came from the API
    photo = tmp_path / "beach.jpg"
    sunset = ImageOps.colorize(Image.radial_gradient("L").resize((300, 200)), "#f4a261", "#264653")
    sunset.save(photo, format="JPEG")
    page.set_input_files("#file", str(photo))
    expect(page.locator("#preview-info")).to_have_text(
        re.compile(r"^beach\.jpg 300×200 → cropped to 200×200 → PNG, \d+ KB$")
    )
    page.check("input[name='fit'][value='pad']")
    expect(page.locator("#preview-info")).to_contain_text("padded to 300×300")
    page.check("input[name='fit'][value='crop']")

    page.fill("#n", "3")
    page.select_option("#size", "256x256")
    page.select_option("#format", "b64_json")
    page.select_option("#model", "tiny-random")
    page.click("#generate")
    variations = page.locator("#grid figure:not(.original) img")
    expect(variations).to_have_count(3)
    expect(page.locator("#elapsed")).to_have_text("3 images.")
    sizes = variations.evaluate_all("images => images.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[256, 256]] * 3
    expect(page.locator("#grid figure.original img")).to_have_count(1)
    expect(page.locator("#error")).to_be_hidden()
    screenshot(page, "playground.png")

    with page.expect_download() as download:
        page.locator("#grid figure:not(.original) a", has_text="Download").first.click()
    saved = tmp_path / "downloaded.png"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "variation-1.png"
    assert decode_png(saved.read_bytes()).size == (256, 256)

    page.locator("#grid button", has_text="Vary this one").nth(1).click()
    expect(page.locator("#preview-info")).to_have_text(re.compile(r"^Variation 2 256×256 → PNG, \d+ KB$"))
    page.select_option("#format", "url")
    page.fill("#n", "1")
    page.click("#generate")
    expect(page.locator("#grid figure:not(.original) img")).to_have_count(1)
    src = page.locator("#grid figure:not(.original) img").get_attribute("src") or ""
    assert "/v1/files/" in src and "signature=" in src


def test_an_api_error_is_shown_in_plain_words(page: Page, tmp_path: Path) -> None:
    save_key(page, "vary-wrong-key")
    expect(page.locator("#error")).to_contain_text("did not accept the API key")  # listing the models failed
    photo = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (10, 10, 10)).save(photo)
    page.set_input_files("#file", str(photo))
    page.click("#generate")
    error = page.locator("#error")
    expect(error).to_have_text(
        "The server did not accept the API key. Check it, then save it again. "
        "(Incorrect API key provided. Create a key with `vary keys create`.)"
    )
    expect(page.locator("#generate")).to_be_enabled()
    screenshot(page, "playground-error.png")


def test_phone_width_and_keyboard(browser: Browser, server: ServerProcess, api_key: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        page.goto(server.base_url + "/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
        screenshot(page, "playground-phone.png")
        reached = []
        for _ in range(20):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("document.activeElement.id || document.activeElement.name"))
        assert {"api-key", "file", "fit", "model", "n", "size", "format", "generate"} <= set(reached)
        # Save the key and generate with the keyboard alone.
        page.focus("#api-key")
        page.keyboard.type(api_key)
        page.keyboard.press("Enter")
        expect(page.locator("#key-status")).to_have_text("Saved.")
    finally:
        context.close()
