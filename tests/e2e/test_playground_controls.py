"""The playground's controls, statuses and accessibility, in Debian's Chromium against a live server.

axe-core (installed from the npm registry into a temporary directory, as the Node SDK test installs
`openai`) checks every state of the page, light and dark, against WCAG 2.1 A and AA.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.test_playground import (  # noqa: F401 - `browser` is the shared Chromium fixture
    DESKTOP,
    PHONE,
    WAIT_MS,
    WATCH_SENT_FORMS,
    browser,
    choose_image,
    error_in_sight,
    image_files,
    save_key,
    screenshot,
)
from vary.testing import ServerProcess

Scheme = Literal["light", "dark"]
AXE_PACKAGE = "axe-core@^4.10"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
REQUIRED = bool(os.environ.get("VARY_REQUIRE_NODE") or os.environ.get("VARY_REQUIRE_BROWSER"))


@pytest.fixture()
def open_page(browser: Browser, server: ServerProcess) -> Iterator[Callable[..., Page]]:  # noqa: F811
    contexts = []

    def open_at(viewport: Any = DESKTOP, color_scheme: Scheme = "light") -> Page:
        # The page's CSP forbids inline and eval'd script; the test's own tools (axe-core, wait_for_function) are both.
        context = browser.new_context(viewport=viewport, color_scheme=color_scheme, bypass_csp=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.add_init_script(WATCH_SENT_FORMS)
        page.goto(server.base_url + "/")
        return page

    yield open_at
    for context in contexts:
        context.close()


def model_controls(server: ServerProcess, api_key: str) -> dict[str, Any]:
    models = httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    controls: dict[str, Any] = models.json()["data"][0]["controls"]
    return controls


def sent_forms(page: Page) -> list[dict[str, Any]]:
    return [dict(parts) for parts in page.evaluate("window.sentForms")]


def test_controls_start_at_the_models_defaults_and_a_seed_can_be_made_again(
    open_page: Callable[..., Page], server: ServerProcess, api_key: str, tmp_path: Path
) -> None:
    controls = model_controls(server, api_key)
    assert controls["steps"]["default"] >= 1 and controls["steps"]["maximum"] == 100  # max_request_steps
    page = open_page()
    save_key(page, api_key)
    for name in ("steps", "guidance_scale"):
        field = page.locator(f"#{name}")
        expect(field).to_have_value(str(controls[name]["default"]).removesuffix(".0"))
        expect(field).to_have_attribute("max", str(controls[name]["maximum"]).removesuffix(".0"))
        expect(page.locator(f"#{name}-hint")).to_contain_text(f"Default {controls[name]['default']}".removesuffix(".0"))
    expect(page.locator("#strength")).to_have_value("1")
    expect(page.locator("#seed")).to_have_value("")

    choose_image(page, tmp_path)
    page.fill("#n", "1")
    page.select_option("#size", "256x256")
    # Out of bounds: said by the field, which takes the focus; nothing is sent.
    page.fill("#steps", str(controls["steps"]["maximum"] + 1))
    page.click("#generate")
    default = controls["steps"]["default"]
    error_in_sight(page, f"Steps: a whole number from 1 to 100, or empty for the default ({default}).")
    expect(page.locator("#steps")).to_be_focused()
    assert sent_forms(page) == []

    # Untouched controls are not sent (the model's defaults apply); changed ones are.
    page.fill("#steps", str(controls["steps"]["default"]))
    page.fill("#guidance_scale", "2.5")
    page.click("#generate")
    expect(page.locator("#elapsed")).to_have_text("1 image.")
    first = sent_forms(page)[0]
    assert first["guidance_scale"] == "2.5" and "steps" not in first and "seed" not in first
    seed_text = page.locator("#seed-used").text_content() or ""
    assert seed_text.startswith("Seed ") and seed_text.removeprefix("Seed ").rstrip(".").isdigit()
    seed = seed_text.removeprefix("Seed ").rstrip(".")
    made = page.locator("#grid figure:not(.original) img").get_attribute("src")

    # "Same seed again": the seed goes into its field and the same request is made, with the same image back.
    page.click("#same-seed")
    expect(page.locator("#seed")).to_have_value(seed)
    page.wait_for_function("window.sentForms.length === 2")
    expect(page.locator("#elapsed")).to_have_text("1 image.")
    assert sent_forms(page)[1]["seed"] == seed
    expect(page.locator("#seed-used")).to_have_text(f"Seed {seed}.")
    expect(page.locator("#grid figure:not(.original) img")).to_have_attribute("src", made or "")

    # Strength below 1 goes out as given (tiny-random has an img2img path).
    page.fill("#strength", "0.5")
    page.click("#generate")
    page.wait_for_function("window.sentForms.length === 3")
    assert sent_forms(page)[2]["strength"] == "0.5"
    expect(page.locator("#elapsed")).to_have_text("1 image.")


def test_statuses_never_go_stale_and_the_live_one_speaks_twice(
    open_page: Callable[..., Page], api_key: str, tmp_path: Path
) -> None:
    page = open_page()
    save_key(page, api_key)
    expect(page.locator("#key-status")).to_have_text("Key accepted.")
    choose_image(page, tmp_path)
    page.fill("#n", "1")
    page.select_option("#size", "256x256")
    page.evaluate(
        """() => {
        window.announced = [];
        new MutationObserver(() => window.announced.push(document.getElementById("elapsed").textContent))
            .observe(document.getElementById("elapsed"), { childList: true, characterData: true, subtree: true });
    }"""
    )
    page.click("#generate")
    expect(page.locator("#elapsed")).to_have_text("1 image.")
    assert page.evaluate("window.announced") == ["Generating…", "1 image."]  # no seconds read out

    # A new file: the count spoke of the last one.
    choose_image(page, tmp_path, size=(80, 80))
    expect(page.locator("#elapsed")).to_have_text("")

    # The server unreachable: no "Key accepted." left beside the error.
    page.click("#key-form button")
    expect(page.locator("#key-status")).to_have_text("Key accepted.")
    page.route("**/v1/images/variations", lambda route: route.abort("connectionrefused"))
    page.click("#generate")
    error_in_sight(page, "Could not reach the server. Is it still running?")
    expect(page.locator("#key-status")).to_have_text("")


def test_the_returned_as_choice_is_not_clipped_and_weight_errors_sit_by_their_field(
    open_page: Callable[..., Page], api_key: str, tmp_path: Path
) -> None:
    for viewport in (DESKTOP, PHONE):
        page = open_page(viewport)
        save_key(page, api_key)
        for value in ("b64_json", "url"):
            page.select_option("#format", value)
            # The chosen option's text, measured in the select's font, fits inside it beside the arrow.
            room = page.evaluate(
                """() => {
                const select = document.getElementById("format");
                const style = getComputedStyle(select);
                const context = document.createElement("canvas").getContext("2d");
                context.font = `${style.fontSize} ${style.fontFamily}`;
                const text = context.measureText(select.selectedOptions[0].text).width;
                const inner = select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
                return inner - text;
            }"""
            )
            assert room >= 20, f"{value} at {viewport}: {room:.0f} px left for the arrow"
    screenshot(page, "playground-options-phone.png")

    page = open_page(DESKTOP)
    save_key(page, api_key)
    page.set_input_files("#file", image_files(tmp_path, ("a.png", (32, 32), "#e76f51"), ("b.png", (32, 32), "#2a9d8f")))
    expect(page.locator("#weight-2")).to_be_visible()
    page.fill("#weight-2", "-1")
    page.click("#generate")
    error_in_sight(page, "Image 2 (b.png): the weight must be a number, 0 or more.")
    field, error = page.locator("#weight-2").bounding_box(), page.get_by_role("alert").bounding_box()
    assert field is not None and error is not None
    card = page.locator("#input-2").bounding_box()
    assert card is not None
    assert 0 <= error["y"] - (field["y"] + field["height"]) < 80, (field, error)  # under the field, in its card
    assert card["x"] <= error["x"] and error["x"] + error["width"] <= card["x"] + card["width"]
    screenshot(page, "playground-weight-error.png")


def test_results_have_distinct_names_and_the_drop_zone_shows_focus(
    open_page: Callable[..., Page], api_key: str, tmp_path: Path
) -> None:
    page = open_page()
    save_key(page, api_key)
    choose_image(page, tmp_path)
    page.fill("#n", "2")
    page.select_option("#size", "256x256")
    page.click("#generate")
    expect(page.locator("#elapsed")).to_have_text("2 images.")
    for n in (1, 2):
        expect(page.get_by_role("link", name=f"Download variation {n}", exact=True)).to_have_count(1)
        expect(page.get_by_role("button", name=f"Vary this one (variation {n})", exact=True)).to_have_count(1)
        expect(page.get_by_role("img", name=f"Variation {n}", exact=True)).to_have_count(1)
    # The caption is not read a second time after the image's alt.
    figure = page.get_by_role("figure").filter(has=page.get_by_role("img", name="Variation 1", exact=True))
    expect(figure.locator("figcaption [aria-hidden=true]")).to_have_text("Variation 1")

    # Keyboard: from the key field, Tab reaches the Save button, then the drop zone's file input.
    page.focus("#api-key")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator("#file")).to_be_focused()
    outline = page.evaluate("getComputedStyle(document.getElementById('drop')).outlineStyle")
    assert outline == "solid", outline


def below(page: Page, field: str, error: str) -> None:
    """The error sits right under its field, within the field's column."""
    box, under = page.locator(f"#{field}").bounding_box(), page.locator(f"#{error}").bounding_box()
    assert box is not None and under is not None
    assert 0 <= under["y"] - (box["y"] + box["height"]) < 60, (box, under)
    assert box["x"] - 1 <= under["x"] and under["x"] + under["width"] <= box["x"] + box["width"] + 1, (box, under)


def test_a_form_error_sits_by_its_field_and_goes_once_the_field_is_fixed(
    open_page: Callable[..., Page], api_key: str, tmp_path: Path
) -> None:
    page = open_page()
    save_key(page, api_key)
    choose_image(page, tmp_path)
    page.select_option("#size", "256x256")

    # How many: checked here, said under the field (it used to come back from the server under Generate).
    page.fill("#n", "0")
    page.click("#generate")
    error_in_sight(page, "How many: a whole number from 1 to 10.")
    below(page, "n", "n-error")
    expect(page.locator("#n")).to_be_focused()
    expect(page.locator("#n")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#error")).to_be_hidden()
    screenshot(page, "playground-field-error.png", full_page=False)
    page.fill("#n", "1")  # fixed: the error goes at once, before any Generate
    expect(page.locator("#n-error")).to_be_hidden()
    expect(page.locator("#n")).not_to_have_attribute("aria-invalid", "true")

    page.fill("#steps", "500")
    page.click("#generate")
    expect(page.locator("#steps-error")).to_be_visible()
    below(page, "steps", "steps-error")
    page.fill("#steps", "3")
    expect(page.locator("#steps-error")).to_be_hidden()
    assert sent_forms(page) == []

    # A refusal the server names a field in (param) is shown by that field too, and goes with the change.
    page.evaluate("document.getElementById('size').append(new Option('300x300'))")
    page.select_option("#size", "300x300")
    page.click("#generate")
    expect(page.locator("#size-error")).to_have_text(
        "'300x300' is not one of ['256x256', '512x512', '1024x1024'] - 'size'"
    )
    below(page, "size", "size-error")
    expect(page.locator("#error")).to_be_hidden()
    page.select_option("#size", "256x256")
    expect(page.locator("#size-error")).to_be_hidden()


def test_emptied_controls_mean_the_models_defaults(
    open_page: Callable[..., Page], server: ServerProcess, api_key: str, tmp_path: Path
) -> None:
    controls = model_controls(server, api_key)
    page = open_page()
    save_key(page, api_key)
    expect(page.locator("#steps-hint")).to_have_text(
        f"Default {controls['steps']['default']} (1 to 100); empty means the default."
    )
    choose_image(page, tmp_path)
    page.fill("#n", "1")
    page.select_option("#size", "256x256")
    for name in ("steps", "guidance_scale", "strength"):
        page.fill(f"#{name}", "")
    page.click("#generate")
    expect(page.locator("#elapsed")).to_have_text("1 image.")
    (sent,) = sent_forms(page)
    assert not {"steps", "guidance_scale", "strength"} & set(sent)


# --- axe-core --------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (VARY_REQUIRE_NODE / VARY_REQUIRE_BROWSER are set)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def axe_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None:
        _unavailable("npm is not installed (apt install npm), so axe-core cannot be had")
    project = tmp_path_factory.mktemp("axe")
    (project / "package.json").write_text(json.dumps({"name": "vary-axe", "private": True}))
    try:
        installed = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", AXE_PACKAGE],
            cwd=project, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        _unavailable("npm install axe-core did not finish in 300 s (is the npm registry reachable?)")
    script = project / "node_modules" / "axe-core" / "axe.min.js"
    if installed.returncode != 0 or not script.is_file():
        _unavailable(f"npm install {AXE_PACKAGE} failed: {installed.stderr.strip()[-500:]}")
    return script


def violations(page: Page, axe: Path) -> list[str]:
    """axe-core's WCAG 2.1 A/AA violations on the page as it is now, one line each."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.add_script_tag(path=str(axe))
    found = page.evaluate("tags => axe.run(document, { runOnly: { type: 'tag', values: tags } })", WCAG_21_AA)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[node['target'] for node in v['nodes']][:5]}"
        for v in found["violations"]
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_wcag_violations_in_any_state(
    open_page: Callable[..., Page],
    server: ServerProcess,
    api_key: str,
    tmp_path: Path,
    axe_script: Path,
    scheme: Scheme,
) -> None:
    page = open_page(DESKTOP, scheme)
    found: dict[str, list[str]] = {}
    found["empty"] = violations(page, axe_script)
    page.fill("#api-key", "vary-wrong")
    page.click("#key-form button")
    expect(page.locator("#key-error")).to_be_visible()
    found["key refused"] = violations(page, axe_script)
    save_key(page, api_key)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    page.set_input_files("#file", str(broken))
    expect(page.locator("#file-error")).to_be_visible()
    found["file refused"] = violations(page, axe_script)
    page.set_input_files("#file", image_files(tmp_path, ("a.png", (32, 32), "#e76f51"), ("b.png", (48, 32), "#2a9d8f")))
    page.fill("#weight-1", "-1")
    page.click("#generate")
    expect(page.locator("#weight-error-1")).to_be_visible()
    found["weight refused"] = violations(page, axe_script)
    page.fill("#weight-1", "1")
    page.fill("#n", "2")
    page.select_option("#size", "256x256")
    page.click("#generate")
    expect(page.locator("#elapsed")).to_have_text("2 images.")
    found["results"] = violations(page, axe_script)
    page.route("**/v1/images/variations", lambda route: route.abort("connectionrefused"))
    page.click("#generate")
    expect(page.locator("#error")).to_be_visible()
    found["generate failed"] = violations(page, axe_script)
    screenshot(page, f"playground-{scheme}-error.png")
    for path in ("/docs", "/redoc"):
        page.goto(server.base_url + path)
        page.wait_for_load_state("networkidle")
        # The docs pages are Swagger UI's and ReDoc's own; vary answers for their language only.
        assert page.locator("html").get_attribute("lang") == "en"
    assert {state: lines for state, lines in found.items() if lines} == {}
