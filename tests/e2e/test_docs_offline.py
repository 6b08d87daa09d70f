"""The API docs in Chromium on a machine without internet: Swagger UI and ReDoc from vary's own files."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.e2e.test_playground import browser  # noqa: F401 - the shared Chromium fixture
from vary.testing import ServerProcess


@pytest.fixture()
def offline_page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:  # noqa: F811
    """A page for which anything but loopback is unreachable, as on a GPU box without internet."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    outside: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page, outside
    context.close()


def test_swagger_ui_works_offline(offline_page: tuple[Page, list[str]], server: ServerProcess) -> None:
    page, outside = offline_page
    page.goto(f"{server.base_url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("vary")
    expect(page.locator(".opblock-summary-path", has_text="/v1/images/variations")).to_be_visible()
    assert page.locator("html").get_attribute("lang") == "en"
    assert outside == []


def test_redoc_works_offline(offline_page: tuple[Page, list[str]], server: ServerProcess) -> None:
    page, outside = offline_page
    page.goto(f"{server.base_url}/redoc")
    expect(page.get_by_role("heading", name="Creates variations of a given image.").first).to_be_visible()
    assert page.locator("html").get_attribute("lang") == "en"
    assert outside == []


def test_authorize_lets_try_it_out_send_the_key(
    offline_page: tuple[Page, list[str]], server: ServerProcess, api_key: str
) -> None:
    page, outside = offline_page
    sent: list[str | None] = []
    page.on(
        "request",
        lambda request: (
            sent.append(request.headers.get("authorization")) if request.url.endswith("/v1/models") else None
        ),
    )
    page.goto(f"{server.base_url}/docs")
    page.get_by_role("button", name="Authorize").first.click()  # there only when the document declares a scheme
    dialog = page.locator(".auth-container", has_text="ApiKeyAuth")
    expect(dialog).to_contain_text("vary keys create")
    dialog.locator("#auth-bearer-value").fill(api_key)
    dialog.get_by_role("button", name="Apply credentials").click()
    dialog.get_by_role("button", name="Close").click()

    models = page.locator(".opblock", has=page.locator(".opblock-summary-path", has_text="/v1/models")).first
    models.locator(".opblock-summary").click()
    models.get_by_role("button", name="Try it out").click()
    models.get_by_role("button", name="Execute").click()
    expect(models.locator(".live-responses-table tbody .response-col_status").first).to_have_text("200")
    assert sent == [f"Bearer {api_key}"]
    assert outside == []
