"""The playground's compare view in Chromium (Debian's, driven by Playwright): several models side by side, against
the server of tests/e2e/test_compare.py (two local models, a hosted one, one that refuses every input)."""

from __future__ import annotations

import base64
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.conftest import decode_png
from tests.e2e import test_compare, test_playground, test_playground_controls
from tests.e2e.test_compare import LOCAL, Served, photo
from tests.e2e.test_playground import PHONE, WAIT_MS, error_in_sight, in_sight, screenshot
from tests.e2e.test_playground_controls import violations

# The fixtures this module shares: the compare server, the Chromium, axe-core.
served = test_compare.served
browser = test_playground.browser
axe_script = test_playground_controls.axe_script


# Each request to /v1/images/variations: its text fields, and how many were in flight at most.
WATCH_COMPARE = """
window.inFlight = 0;
window.mostInFlight = 0;
window.sentFields = [];
const realFetch = window.fetch;
window.fetch = async (input, init) => {
    const watched = String(input).endsWith("/v1/images/variations");
    if (watched) {
        window.inFlight += 1;
        window.mostInFlight = Math.max(window.mostInFlight, window.inFlight);
        const text = ([name, value]) => [name, typeof value === "string" ? value : "<file>"];
        window.sentFields.push([...init.body.entries()].map(text));
    }
    try {
        return await realFetch(input, init);
    } finally {
        if (watched) window.inFlight -= 1;
    }
};
"""
CHOSEN = ("tiny-random", "tiny-random-sd-image-variations", "hosted", "refused")


@pytest.fixture()
def compare_page(browser: Browser, served: Served) -> Iterator[Callable[..., Page]]:
    contexts = []

    def open_at(viewport: Any = None, color_scheme: Any = "light") -> Page:
        # bypass_csp: the test's own tools (axe-core, wait_for_function) are scripts the page's CSP forbids.
        context = browser.new_context(
            viewport=viewport or {"width": 1280, "height": 900},
            color_scheme=color_scheme,
            accept_downloads=True,
            bypass_csp=True,
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.add_init_script(WATCH_COMPARE)
        page.goto(served.server.base_url + "/")
        return page

    yield open_at
    for context in contexts:
        context.close()


def ready_to_compare(page: Page, served: Served, tmp_path: Path, *models: str) -> None:
    page.fill("#api-key", served.key)
    page.click("#key-form button")
    expect(page.locator("#compare-list input")).to_have_count(5)  # the four, and the dall-e-2 alias
    page.set_input_files("#file", str(photo(tmp_path / "otter.png")))
    expect(page.locator("#preview-info")).to_contain_text("PNG")
    for model in models:
        page.get_by_role("checkbox", name=model, exact=True).check()
    page.select_option("#compare-size", "256x256")


def cell(page: Page, model: str) -> Any:
    return page.locator("#compare-grid figure").filter(has=page.locator("strong", has_text=re.compile(f"^{model}$")))


def test_every_chosen_model_side_by_side_with_the_same_seed(
    compare_page: Callable[..., Page], served: Served, tmp_path: Path
) -> None:
    page = compare_page()
    ready_to_compare(page, served, tmp_path, *CHOSEN)
    licences = {m["id"]: m["license"] for m in models_listed(served)}
    for model in CHOSEN:
        expect(page.get_by_role("checkbox", name=model, exact=True)).to_have_accessible_description(
            re.compile(f"^Licence: {re.escape(licences[model])}")
        )
    page.fill("#compare-seed", "7")
    page.click("#compare")
    expect(page.locator("#compare-status")).to_have_text("3 of 4 models made an image; 1 refused.")
    expect(page.locator("#comparison-seed")).to_have_text("Seed 7, the same for every model; 256x256.")

    # One request per model, the same seed and one image each, never more than three at once.
    sent = [dict(fields) for fields in page.evaluate("window.sentFields")]
    assert sorted(fields["model"] for fields in sent) == sorted(CHOSEN)
    assert {(fields["seed"], fields["n"], fields["size"]) for fields in sent} == {("7", "1", "256x256")}
    assert page.evaluate("window.mostInFlight") == 3  # all at once up to the bound, and no further

    for model in CHOSEN:
        figure = cell(page, model)
        expect(figure.locator("dd").nth(0)).to_have_text(licences[model])
        expect(figure.locator("dd").nth(1)).to_have_text(re.compile(r"^\d+\.\d s$"))
    for model in LOCAL:
        expect(cell(page, model).locator("dd").nth(2)).to_have_text("7")
        expect(cell(page, model).get_by_role("img", name=f"Variation by {model}")).to_be_visible()
    expect(cell(page, "hosted").locator("dd").nth(2)).to_have_text("the provider's own")
    refused = cell(page, "refused")
    expect(refused.locator(".error")).to_have_text(
        "Refused by the content policy. Your input image may contain content that is not allowed by our safety system."
    )
    expect(refused.get_by_role("img")).to_have_count(0)
    screenshot(page, "playground-compare.png")

    # The seed is the request's: the API with seed 7 gives tiny-random's image again.
    again = httpx.post(
        f"{served.server.base_url}/v1/images/variations",
        headers={"Authorization": f"Bearer {served.key}"},
        files={"image": ("otter.png", page_png(page), "image/png")},
        data={"model": "tiny-random", "seed": "7", "size": "256x256", "response_format": "b64_json"},
        timeout=120,
    )
    shown = cell(page, "tiny-random").get_by_role("img").get_attribute("src") or ""
    assert shown == "data:image/png;base64," + again.json()["data"][0]["b64_json"]

    # Download all: every image as shown, and a contact sheet, in one zip.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download all (.zip)").click()
    assert download.value.suggested_filename == "vary-compare-seed-7.zip"
    saved = tmp_path / "all.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert archive.testzip() is None  # every CRC right
        names = archive.namelist()
        assert names == [
            "01-tiny-random.png",
            "02-tiny-random-sd-image-variations.png",
            "03-hosted.png",
            "contact-sheet.png",
        ]
        for name, model in zip(names[:3], CHOSEN[:3], strict=True):
            src = cell(page, model).get_by_role("img").get_attribute("src") or ""
            assert archive.read(name) == base64.b64decode(src.split(",", 1)[1])
        sheet = decode_png(archive.read("contact-sheet.png"))
        assert sheet.size == (12 + 4 * (256 + 12), 12 + 2 * (256 + 64 + 12))

    # "Vary this one": that cell's image becomes the input, and Compare has the focus for the next round.
    cell(page, "hosted").get_by_role("button", name="Vary this one (the variation by hosted)").click()
    expect(page.locator("#preview-info")).to_have_text(re.compile(r"^hosted variation 256×256 → PNG"))
    expect(page.locator("#compare")).to_be_focused()


def models_listed(served: Served) -> list[dict[str, Any]]:
    listed = httpx.get(
        f"{served.server.base_url}/v1/models", headers={"Authorization": f"Bearer {served.key}"}, timeout=30
    )
    data: list[dict[str, Any]] = listed.json()["data"]
    return data


def page_png(page: Page) -> bytes:
    """The square PNG the page made of the input, as it sends it."""
    data_url = page.evaluate(
        """async () => {
        const blob = state.inputs[0].png;
        const reader = new FileReader();
        reader.readAsDataURL(blob);
        return await new Promise((resolve) => { reader.onload = () => resolve(reader.result); });
    }"""
    )
    return base64.b64decode(data_url.split(",", 1)[1])


def test_with_the_keyboard_alone_a_blend_and_the_errors_by_their_fields(
    compare_page: Callable[..., Page], served: Served, tmp_path: Path
) -> None:
    page = compare_page(PHONE)
    page.fill("#api-key", served.key)
    page.click("#key-form button")
    expect(page.locator("#compare-list input")).to_have_count(5)
    first, second = photo(tmp_path / "a.png"), tmp_path / "b.png"
    Image.new("RGB", (40, 40), "#2a9d8f").save(second)
    page.set_input_files("#file", [str(first), str(second)])
    expect(page.locator("#preview figure.input")).to_have_count(2)
    page.fill("#weight-1", "3")

    # No model chosen: said by the list, and the focus goes to its first box.
    page.focus("#compare")
    page.keyboard.press("Enter")
    error_in_sight(page, "Choose one or more models to compare.")
    expect(page.locator("#compare-model-1")).to_be_focused()
    page.keyboard.press("Space")  # the focused box, checked from the keyboard: the error goes
    expect(page.locator("#compare-models-error")).to_be_hidden()
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    page.fill("#compare-seed", "-3")
    page.focus("#compare")
    page.keyboard.press("Enter")
    expect(page.locator("#compare-seed-error")).to_have_text(
        "The seed must be a whole number from 0 to 2147483646, or empty."
    )
    expect(page.locator("#compare-seed")).to_be_focused()
    page.fill("#compare-seed", "")  # empty: one seed drawn for all
    expect(page.locator("#compare-seed-error")).to_be_hidden()
    page.select_option("#compare-size", "256x256")
    page.focus("#compare")
    page.keyboard.press("Enter")
    expect(page.locator("#compare-status")).to_have_text("2 of 2 models made an image.")
    sent = [dict(fields) for fields in page.evaluate("window.sentFields")]
    assert [fields["model"] for fields in sent] == list(LOCAL)
    assert len({fields["seed"] for fields in sent}) == 1 and sent[0]["seed"].isdigit()
    assert all(fields["image_weights"] == "3,1" for fields in sent)  # the blend, as Generate sends it
    assert all([name for name, _ in fields].count("image[]") == 2 for fields in page.evaluate("window.sentFields"))
    expect(page.locator("#comparison-seed")).to_have_text(f"Seed {sent[0]['seed']}, the same for every model; 256x256.")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing wider than a phone
    in_sight(page.locator("#comparison-heading"))
    screenshot(page, "playground-compare-phone.png", full_page=False)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_compare_view_has_no_wcag_violations(
    compare_page: Callable[..., Page],
    served: Served,
    tmp_path: Path,
    axe_script: Path,
    scheme: str,
) -> None:
    page = compare_page(color_scheme=scheme)
    found = {"no models listed": violations(page, axe_script)}
    ready_to_compare(page, served, tmp_path)
    page.click("#compare")
    expect(page.locator("#compare-models-error")).to_be_visible()
    found["no model chosen"] = violations(page, axe_script)
    for model in CHOSEN:
        page.get_by_role("checkbox", name=model, exact=True).check()
    page.click("#compare")
    expect(page.locator("#compare-status")).to_have_text("3 of 4 models made an image; 1 refused.")
    found["compared, one refused"] = violations(page, axe_script)
    screenshot(page, f"playground-compare-{scheme}.png")
    assert {state: lines for state, lines in found.items() if lines} == {}
