from __future__ import annotations

import pickle

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from vary import errors
from vary.api.errors import api_error, install_error_handlers


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


@pytest.mark.parametrize(
    "error",
    [
        errors.Overloaded("m", 3),
        errors.ControlInvalid("strength", "too weak"),
        errors.ModelNotFound("nope"),
        errors.ReplicaLost("m", 2),
        errors.UpstreamFailure("boom", status=502, retryable=True, retry_after=1.5),
    ],
)
def test_domain_errors_cross_processes_intact(error: errors.VaryError) -> None:
    """A Ray Serve replica raises them for the edge to answer: pickled, they come back as they were."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.args == error.args and copy.__dict__ == error.__dict__
    assert api_error(copy).response().body == api_error(error).response().body


def test_a_lost_replica_is_a_503_with_retry_after() -> None:
    response = api_error(errors.ReplicaLost("m", 2)).response()
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
