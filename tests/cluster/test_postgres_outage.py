"""A PostgreSQL that goes away while vary serves (its own server, stopped by its pid mid-test).

What needs the database answers OpenAI's 503 JSON with Retry-After, never a 500 or a hang: a request with
a key (the key cannot be checked), /v1/models. What does not goes on: under --no-auth a variation is
answered and its usage row spooled; /readyz says the database is failing; /healthz is fine. The log has
one line per failure, no traceback, and never the URL's password.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster.postgres import PostgresServer, started_postgres, stop
from tests.harness import post_variation
from vary.state.database import Database
from vary.testing import ServerProcess, running

pytestmark = pytest.mark.cluster
PASSWORD = "hunter2-never-shown"


@pytest.fixture()
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: the session's stays up for the other tests."""
    with started_postgres() as server:
        yield server


def test_a_database_gone_is_a_503_for_what_needs_it_and_the_rest_goes_on(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    with own_postgres.connect() as connection:
        connection.execute(f"ALTER USER postgres PASSWORD '{PASSWORD}'")  # trust auth ignores it
    url = own_postgres.url().replace("postgres@", f"postgres:{PASSWORD}@")
    db = Database.open(url)
    _, key = db.create_key("outage")
    db.close()
    env = {"VARY_DATABASE_URL": url, "VARY_LOG_FORMAT": "json", "VARY_READYZ_INTERVAL_SECONDS": "0"}
    with running(
        ServerProcess(tmp_path / "keyed", env=env), ServerProcess(tmp_path / "open", env=env, extra_args=["--no-auth"])
    ) as (keyed, open_):
        assert post_variation(keyed.base_url, key).status_code == 200
        stop(own_postgres.process)  # by its pid

        refused = post_variation(keyed.base_url, key)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "database_unavailable" and refused.headers["retry-after"] == "5"
        models = httpx.get(f"{keyed.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert models.status_code == 503 and models.json()["error"]["type"] == "server_error"
        assert post_variation(keyed.base_url, None).status_code == 401  # no key at all needs no database

        assert post_variation(open_.base_url, None).status_code == 200  # --no-auth: answered, its usage row spooled
        ready = httpx.get(f"{open_.base_url}/readyz", timeout=60)
        assert ready.status_code == 503 and ready.json()["database"].startswith("failing: ")
        assert ready.json()["usage_spooled"] >= 1
        assert httpx.get(f"{open_.base_url}/healthz", timeout=60).status_code == 200

        assert keyed.wait_for_log("the database cannot check an API key now")
    for server in (keyed, open_):
        assert "Traceback" not in server.log() and PASSWORD not in server.log()
