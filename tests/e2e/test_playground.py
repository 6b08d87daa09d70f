"""The playground in a real headless Chromium (Debian's, driven by Playwright) against a live server."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from tests.harness import Running, catalogue, decode_png, local, route, serve
from vary.testing import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("VARY_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
WAIT_MS = 60_000

if CHROMIUM is None and not os.environ.get("VARY_REQUIRE_BROWSER"):
    pytest.skip("no system Chromium (apt install chromium); .ci/run installs it", allow_module_level=True)

from playwright.sync_api import Browser, Locator, Page, Request, ViewportSize, expect, sync_playwright  # noqa: E402

# Generating waits for the model, on a machine that may be busy: expectations wait as long as actions.
expect.set_options(timeout=WAIT_MS)

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}


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


@pytest.fixture()
def open_page(browser: Browser, server: ServerProcess) -> Iterator[Callable[[ViewportSize], Page]]:
    """Opens the playground in a fresh browser context of the given viewport size."""
    contexts = []

    def open_at(viewport: ViewportSize) -> Page:
        context = browser.new_context(viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(server.base_url + "/")
        return page

    yield open_at
    for context in contexts:
        context.close()


def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def save_key(page: Page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#key-form button")
    expect(page.locator("#model option[value='tiny-random']")).to_have_count(1)  # the models came from the API


def choose_image(page: Page, tmp_path: Path, size: tuple[int, int] = (64, 64)) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", size, (10, 120, 200)).save(photo)
    page.set_input_files("#file", str(photo))
    expect(page.locator("#preview-info")).to_contain_text("photo.png")


def in_sight(element: Locator) -> None:
    """The element is on the screen, whole: not below the fold."""
    expect(element).to_be_in_viewport(ratio=1)


def error_in_sight(page: Page, text: str) -> None:
    """The page's one visible alert is on the screen, whole, and says `text`."""
    alert = page.get_by_role("alert")
    in_sight(alert)
    expect(alert).to_have_text(text)


def variation_requests(page: Page) -> list[Request]:
    sent: list[Request] = []
    page.on("request", lambda request: sent.append(request) if request.url.endswith("/v1/images/variations") else None)
    return sent


# Chromium does not show a test the body of a request made from a Blob, so the page's fetch is
# watched instead: each image handed to it for /v1/images/variations is measured on its way out.
WATCH_SENT_IMAGES = """
window.sentImages = [];
const realFetch = window.fetch;
window.fetch = async (input, init) => {
    const image = init && init.body instanceof FormData ? init.body.get("image") : null;
    if (image) {
        const bitmap = await createImageBitmap(image);
        window.sentImages.push([bitmap.width, bitmap.height]);
    }
    return realFetch(input, init);
};
"""


def watching(page: Page, script: str, key: str) -> Page:
    """The page with `script` watching what it sends (reloaded, so the script runs first), and the key saved."""
    page.add_init_script(script)
    page.reload()
    save_key(page, key)
    return page


def scroll_to_bottom(page: Page) -> None:
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")


def test_a_non_square_jpeg_to_three_variations_downloaded_and_varied_again(
    page: Page, api_key: str, tmp_path: Path
) -> None:
    save_key(page, api_key)
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
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)")
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


def test_a_key_is_checked_when_saved_and_a_refusal_is_shown_by_the_key_field(
    open_page: Callable[[ViewportSize], Page], api_key: str, tmp_path: Path
) -> None:
    page = open_page(DESKTOP)
    status, key_error = page.locator("#key-status"), page.locator("#key-error")
    from vary.api.auth import WRONG_KEY

    refused = f"Key refused: {WRONG_KEY}"
    page.fill("#api-key", "vary-wrong-key")
    page.click("#key-form button")
    error_in_sight(page, refused)
    expect(key_error).to_be_visible()
    expect(status).to_have_text("")  # never "Saved." for a key the server refuses
    expect(page.locator("#model option")).to_have_count(1)  # only "server default": no models listed
    assert page.evaluate("localStorage.getItem('vary.apiKey')") is None  # a refused key is not kept

    # Generate from the bottom of the page: the 401 is shown by the key field, on the screen, and the
    # focus is in the field to fix it.
    choose_image(page, tmp_path)
    scroll_to_bottom(page)
    page.click("#generate")
    error_in_sight(page, refused)
    expect(key_error).to_be_visible()
    expect(page.locator("#api-key")).to_be_focused()
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#error")).to_be_hidden()
    screenshot(page, "playground-error.png", full_page=False)

    # The right key, saved: accepted, the old error gone, the models listed.
    page.fill("#api-key", api_key)
    page.click("#key-form button")
    expect(status).to_have_text("Key accepted.")
    expect(key_error).to_be_hidden()
    expect(page.locator("#model option[value='tiny-random']")).to_have_count(1)
    assert page.evaluate("localStorage.getItem('vary.apiKey')") == api_key


def test_a_key_typed_but_not_saved_is_the_one_sent(
    open_page: Callable[[ViewportSize], Page], api_key: str, tmp_path: Path
) -> None:
    page = open_page(DESKTOP)
    sent = variation_requests(page)
    page.fill("#api-key", api_key)  # no Save
    choose_image(page, tmp_path)
    page.fill("#n", "1")
    page.select_option("#size", "256x256")
    page.click("#generate")
    expect(page.locator("#grid figure:not(.original) img")).to_have_count(1)
    expect(page.locator("#key-error")).to_be_hidden()
    assert [request.headers.get("authorization") for request in sent] == [f"Bearer {api_key}"]


def test_without_a_key_the_error_is_by_the_key_field_not_below_the_fold(
    open_page: Callable[[ViewportSize], Page], tmp_path: Path
) -> None:
    page = open_page(DESKTOP)
    choose_image(page, tmp_path, size=(300, 200))
    # Reach Generate as a keyboard user does (the browser scrolls no further than needed): the 401
    # used to appear under it at y=833 in this 800 px window. Now it is by the key field, in sight,
    # with the focus there to type the key.
    page.focus("#generate")
    page.keyboard.press("Enter")
    error_in_sight(page, "This server needs an API key: paste it above, then Save.")
    expect(page.locator("#key-error")).to_be_visible()
    expect(page.locator("#api-key")).to_be_focused()
    screenshot(page, "playground-no-key.png", full_page=False)


def test_a_file_that_fails_to_load_leaves_nothing_to_send(
    open_page: Callable[[ViewportSize], Page], api_key: str, tmp_path: Path
) -> None:
    page = open_page(PHONE)
    sent = variation_requests(page)
    save_key(page, api_key)
    choose_image(page, tmp_path)
    expect(page.locator("#generate")).to_be_enabled()

    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"this is not an image")
    page.set_input_files("#file", str(broken))
    error_in_sight(page, "holiday.png is not an image the browser can read. Try a PNG, JPEG, WebP or GIF.")
    file_error = page.locator("#file-error")
    expect(file_error).to_be_visible()
    expect(page.locator("#file")).to_be_focused()
    expect(page.locator("#preview")).to_be_hidden()  # the previous image is gone, not kept to be sent
    expect(page.locator("#generate")).to_be_disabled()
    screenshot(page, "playground-phone-bad-file.png", full_page=False)

    # Generate from the keyboard all the same: nothing is sent, and the page says what is missing.
    page.focus("#generate")
    page.keyboard.press("Enter")
    error_in_sight(page, "Choose an image first.")
    expect(file_error).to_be_visible()
    expect(page.locator("#file")).to_be_focused()
    assert sent == []


def test_generate_waits_for_the_preview_of_the_chosen_fit(
    open_page: Callable[[ViewportSize], Page], api_key: str, tmp_path: Path
) -> None:
    page = watching(open_page(DESKTOP), WATCH_SENT_IMAGES, api_key)
    choose_image(page, tmp_path, size=(300, 200))
    expect(page.locator("#preview-info")).to_contain_text("cropped to 200×200")
    page.fill("#n", "1")
    page.select_option("#size", "256x256")
    # Choose "pad" and press Generate in the same instant, before the padded PNG can exist: Generate
    # is disabled then, and the click sends nothing (it used to send the cropped image).
    disabled_at_once = page.evaluate(
        """() => {
            document.querySelector("input[name='fit'][value='pad']").click();
            const generate = document.getElementById("generate");
            generate.click();
            return generate.getAttribute("aria-disabled");
        }"""
    )
    assert disabled_at_once == "true"
    expect(page.locator("#preview-info")).to_contain_text("padded to 300×300")
    page.click("#generate")  # Playwright waits for it to be enabled
    expect(page.locator("#grid figure:not(.original) img")).to_have_count(1)
    assert page.evaluate("window.sentImages") == [[300, 300]]


def test_the_favicon_is_served(open_page: Callable[[ViewportSize], Page], server: ServerProcess) -> None:
    failed: list[str] = []
    page = open_page(DESKTOP)
    page.on("response", lambda response: failed.append(response.url) if response.status >= 400 else None)
    page.reload()
    for path in ("/favicon.ico", page.locator("link[rel='icon']").get_attribute("href", timeout=1000) or ""):
        response = page.request.get(server.base_url + path)
        assert response.status == 200, path
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert response.body().startswith(b"<svg")
    assert failed == []


def test_phone_width_and_keyboard(open_page: Callable[[ViewportSize], Page], api_key: str, tmp_path: Path) -> None:
    page = open_page(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    screenshot(page, "playground-phone.png")
    reached = []
    for _ in range(20):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.name"))
    assert {"api-key", "file", "fit", "model", "n", "size", "format", "generate"} <= set(reached)
    # Save the key and generate with the keyboard alone (only the file comes from outside: a file
    # chooser is the system's, not the page's).
    page.focus("#api-key")
    page.keyboard.type(api_key)
    page.keyboard.press("Enter")
    expect(page.locator("#model option[value='tiny-random']")).to_have_count(1)  # the key worked
    choose_image(page, tmp_path, size=(120, 90))
    page.focus("#n")
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    page.focus("#size")
    page.keyboard.press("Home")  # the first size, 256x256
    page.focus("#generate")
    page.keyboard.press("Enter")
    # The results arrive below the screen on a phone: the page brings them up.
    expect(page.locator("#grid figure:not(.original) img")).to_have_count(2)
    in_sight(page.locator("#results-heading"))
    expect(page.locator("#size")).to_have_value("256x256")
    screenshot(page, "playground-phone-results.png", full_page=False)


# Every part of each FormData the page sends to /v1/images/variations, in order: a file part as
# [name, [width, height]], a field as [name, value].
WATCH_SENT_FORMS = """
window.sentForms = [];
const realFetch = window.fetch;
window.fetch = async (input, init) => {
    if (init && init.body instanceof FormData && String(input).endsWith("/v1/images/variations")) {
        const parts = [];
        for (const [name, value] of init.body.entries()) {
            if (value instanceof Blob) {
                const bitmap = await createImageBitmap(value);
                parts.push([name, [bitmap.width, bitmap.height]]);
            } else {
                parts.push([name, value]);
            }
        }
        window.sentForms.push(parts);
    }
    return realFetch(input, init);
};
"""


def image_files(tmp_path: Path, *specs: tuple[str, tuple[int, int], str]) -> list[str]:
    paths = []
    for name, size, colour in specs:
        path = tmp_path / name
        Image.new("RGB", size, colour).save(path)
        paths.append(str(path))
    return paths


def sent_images(form: list[list[object]]) -> list[list[object]]:
    return [part for part in form if part[0] in ("image", "image[]", "image_weights")]


def test_two_images_weighted_3_and_1_are_blended_and_removing_one_sends_one(
    open_page: Callable[[ViewportSize], Page], api_key: str, tmp_path: Path
) -> None:
    page = watching(open_page(DESKTOP), WATCH_SENT_FORMS, api_key)
    otter, sunset = image_files(tmp_path, ("otter.png", (96, 64), "#7f5539"), ("sunset.jpg", (80, 80), "#f4a261"))
    page.set_input_files("#file", otter)
    expect(page.locator("#preview-info")).to_have_text(re.compile(r"^otter\.png 96×64 → cropped to 64×64 → PNG, "))
    expect(page.locator("#weight-1")).to_be_hidden()  # one image: no weight to give
    # "Add an image" keeps the first one.
    page.set_input_files("#add-file", sunset)
    expect(page.locator("#preview-info-2")).to_have_text(re.compile(r"^sunset\.jpg 80×80 → PNG, "))
    expect(page.locator("#preview-info")).to_contain_text("otter.png")
    expect(page.locator("#preview figure.input")).to_have_count(2)
    expect(page.locator("#weight-1")).to_have_value("1")
    expect(page.locator("#weight-2")).to_have_value("1")

    page.fill("#weight-1", "3")
    page.fill("#n", "2")
    page.select_option("#size", "256x256")
    page.select_option("#format", "b64_json")
    page.click("#generate")
    expect(page.locator("#grid figure:not(.original) img")).to_have_count(2)
    expect(page.locator("#grid figure.original figcaption")).to_have_text(["Image 1", "Image 2"])
    expect(page.locator("#error")).to_be_hidden()
    sent = page.evaluate("window.sentForms")
    assert [sent_images(form) for form in sent] == [
        [["image[]", [64, 64]], ["image[]", [80, 80]], ["image_weights", "3,1"]]
    ]
    screenshot(page, "playground-two-images.png")

    # Remove the first: the sunset alone, sent as the one-image request it always was.
    page.get_by_role("button", name="Remove image 1 (otter.png)").click()
    expect(page.locator("#preview figure.input")).to_have_count(1)
    expect(page.locator("#preview-info")).to_contain_text("sunset.jpg")
    expect(page.locator("#weight-1")).to_be_hidden()
    expect(page.get_by_role("button", name="Remove image 1 (sunset.jpg)")).to_be_focused()
    page.fill("#n", "1")
    page.click("#generate")
    expect(page.locator("#grid figure:not(.original) img")).to_have_count(1)
    expect(page.locator("#grid figure.original figcaption")).to_have_text(["Original"])
    sent = page.evaluate("window.sentForms")
    assert len(sent) == 2
    assert sent_images(sent[1]) == [["image", [80, 80]]]

    # "Vary this one" replaces the inputs with that one image.
    page.set_input_files("#add-file", otter)
    expect(page.locator("#preview figure.input")).to_have_count(2)
    page.locator("#grid button", has_text="Vary this one").click()
    expect(page.locator("#preview figure.input")).to_have_count(1)
    expect(page.locator("#preview-info")).to_have_text(re.compile(r"^Variation 1 256×256 → PNG, "))


def test_errors_name_the_image_that_is_wrong(
    open_page: Callable[[ViewportSize], Page], api_key: str, tmp_path: Path
) -> None:
    page = watching(open_page(DESKTOP), WATCH_SENT_FORMS, api_key)
    files = image_files(tmp_path, *[(f"p{i}.png", (32, 32), "#2a9d8f") for i in range(1, 7)])
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"this is not an image")

    # Six chosen at once: five are kept, the sixth is named as left out.
    page.set_input_files("#file", files)
    error_in_sight(page, "At most 5 images are blended; left out: p6.png.")
    expect(page.locator("#preview figure.input")).to_have_count(5)
    expect(page.locator("#add")).to_be_hidden()  # no room for more

    # A file the browser cannot read, added among good ones: named, left out, the others kept.
    page.set_input_files("#file", files[:2])
    expect(page.locator("#file-error")).to_be_hidden()  # a new choice clears the old error
    page.set_input_files("#add-file", str(broken))
    error_in_sight(
        page, "holiday.png is not an image the browser can read, so it was left out. Try a PNG, JPEG, WebP or GIF."
    )
    expect(page.locator("#add-file")).to_be_focused()
    expect(page.locator("#preview figure.input")).to_have_count(2)
    expect(page.locator("#generate")).to_be_enabled()

    # A weight that is not a number of 0 or more names its image, and nothing is sent.
    page.fill("#weight-2", "-1")
    scroll_to_bottom(page)
    page.click("#generate")
    error_in_sight(page, "Image 2 (p2.png): the weight must be a number, 0 or more.")
    expect(page.locator("#weight-2")).to_be_focused()
    page.fill("#weight-1", "0")
    page.fill("#weight-2", "0")
    page.click("#generate")
    error_in_sight(page, "The weights are all 0: give at least one image a weight above 0.")
    expect(page.locator("#weight-1")).to_be_focused()
    assert page.evaluate("window.sentForms") == []


def test_several_inputs_sit_side_by_side_on_a_phone(
    open_page: Callable[[ViewportSize], Page], api_key: str, tmp_path: Path
) -> None:
    page = open_page(PHONE)
    save_key(page, api_key)
    files = image_files(
        tmp_path, ("a.png", (400, 300), "#e76f51"), ("b.png", (300, 400), "#2a9d8f"), ("c.png", (200, 200), "#264653")
    )
    page.set_input_files("#file", files)
    cards = page.locator("#preview figure.input")
    expect(cards).to_have_count(3)
    for n in (1, 2, 3):
        expect(page.locator(f"#weight-{n}")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    boxes = [cards.nth(i).bounding_box() for i in range(3)]
    assert all(box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390 for box in boxes)
    assert boxes[0] is not None and boxes[1] is not None and boxes[2] is not None
    assert boxes[0]["y"] == boxes[1]["y"]  # the first two side by side
    assert boxes[2]["y"] > boxes[0]["y"]  # the third wraps to the next row
    page.locator("#preview").scroll_into_view_if_needed()
    screenshot(page, "playground-phone-inputs.png", full_page=False)


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A server whose one model refuses every input (the content policy at threshold 0), and a route to it
    that refuses every output instead."""
    models = catalogue(
        local("tiny-random", safety={"check": "input", "threshold": 0}),
        route("outputs-refused", ["tiny-random"], safety={"check": "output", "threshold": 0}),
    )
    with serve(tmp_path_factory.mktemp("policy-playground"), catalogue=models) as vary:
        yield vary


def test_a_content_policy_refusal_is_a_clear_message_by_the_image(
    browser: Browser, policy_server: Running, tmp_path: Path
) -> None:
    server, key = policy_server.server, policy_server.key
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(server.base_url + "/")
        save_key(page, key)
        choose_image(page, tmp_path)
        page.select_option("#size", "256x256")
        page.click("#generate")
        refusal = page.locator("#file-error")  # by the image it is about, not a generic failure
        expect(refusal).to_have_text(
            "Refused by the content policy. "
            "Your input image may contain content that is not allowed by our safety system."
        )
        in_sight(refusal)
        expect(page.locator("#results")).to_be_hidden()
        screenshot(page, "playground-content-policy.png")

        page.select_option("#model", "outputs-refused")
        page.click("#generate")
        expect(page.locator("#error")).to_contain_text("Refused by the content policy. Your request was rejected")
    finally:
        context.close()
