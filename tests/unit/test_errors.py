from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from vary.api.errors import install_error_handlers


def test_fastapi_validation_errors_leave_as_openai_400s() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/items")
    async def items(limit: int) -> dict[str, int]:
        return {"limit": limit}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("CUDA out of memory at /secret/path")

    client = TestClient(app, raise_server_exceptions=False)
    response = client.get("/items", params={"limit": "many"})
    assert response.status_code == 400
    body = response.json()["error"]
    assert body["type"] == "invalid_request_error" and body["param"] == "limit" and body["code"] is None
    assert "detail" not in response.json()
    crash = client.get("/boom")
    assert crash.status_code == 500
    assert crash.json()["error"]["type"] == "server_error"
    assert "secret" not in crash.text and "CUDA" not in crash.text
