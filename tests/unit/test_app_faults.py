"""The real app in-process (tiny-random engine), with one fault injected at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import png_bytes
from vary.app import build_app
from vary.engines.kandinsky import KandinskyVariationEngine
from vary.settings import Settings


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = build_app(
        Settings(data_dir=tmp_path, model="tiny-random", no_auth=True),
        load_engines=lambda s: [KandinskyVariationEngine.tiny_random()],
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_a_failing_usage_write_does_not_cost_the_client_its_images(client: TestClient) -> None:
    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    client.app.state.services.db.record_usage = disk_full  # type: ignore[attr-defined]
    response = client.post(
        "/v1/images/variations", files={"image": ("a.png", png_bytes())}, data={"response_format": "b64_json", "n": "2"}
    )
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2


def test_a_failing_engine_is_a_500_that_leaks_nothing_and_the_next_request_works(client: TestClient) -> None:
    engine = client.app.state.services.registry.default.engine  # type: ignore[attr-defined]
    real_generate = engine.generate
    calls = 0

    def fails_once(batch: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB at /opt/secret/weights")
        return real_generate(batch)

    engine.generate = fails_once
    first = client.post("/v1/images/variations", files={"image": ("a.png", png_bytes())})
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "server_error"
    assert "CUDA" not in first.text and "secret" not in first.text
    second = client.post("/v1/images/variations", files={"image": ("a.png", png_bytes())}, data={"size": "256x256"})
    assert second.status_code == 200
