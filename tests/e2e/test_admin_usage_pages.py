"""GET /v1/admin/usage sums the usage up in the database, a page at a time: the same numbers as summing the
rows in Python (`vary usage`), over 30,000 rows in 120 groups, and a page is never more than it asked for."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Running, create_key, serve, usage_rows
from vary.ops.usage_report import summarise

ROWS = 30_000
WAIT_S = 120


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, str]]:
    root = tmp_path_factory.mktemp("admin-usage")
    data_dir = root / "data"
    admin = create_key(data_dir, "admin", admin=True)[1]
    chance = random.Random(7)
    rows = [
        (
            1_700_000_000.0 + i,
            f"key{i % 4}",
            f"user{i % 7}" if i % 11 else None,
            f"model{i % 5}",
            chance.randint(1, 10),
            chance.choice((200, 200, 200, 429, 500)),
            chance.uniform(5, 5000),
        )
        for i in range(ROWS)
    ]
    with sqlite3.connect(data_dir / "vary.db") as connection:
        connection.executemany(
            'INSERT INTO usage (created_at, key_id, "user", model, n, status, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?)',
            rows,
        )
    with serve(root, key=False) as vary:  # the rows are in before it starts
        yield vary, admin


def expected(data_dir: Path, **filters: str) -> list[dict[str, object]]:
    return [summary.__dict__ for summary in summarise(usage_rows(data_dir, **filters))]


def test_pages_of_groups_sum_up_to_what_the_rows_say(admin_server: tuple[Running, str]) -> None:
    vary, admin = admin_server
    want = expected(vary.data_dir)
    assert len(want) > 100  # more groups than one default page holds
    pages: list[dict[str, object]] = []
    offset = 0
    while True:
        page = httpx.get(
            f"{vary.base_url}/v1/admin/usage",
            params={"limit": 50, "offset": offset},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=WAIT_S,
        )
        assert page.status_code == 200, page.text
        assert len(page.json()["data"]) <= 50
        pages += page.json()["data"]
        if not page.json()["has_more"]:
            break
        offset += 50
    assert pages == want


def test_filters_and_the_default_page(admin_server: tuple[Running, str]) -> None:
    vary, admin = admin_server
    answer = httpx.get(
        f"{vary.base_url}/v1/admin/usage",
        params={"key": "key1", "user": "user3"},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=WAIT_S,
    )
    assert answer.json() == {
        "object": "list",
        "data": expected(vary.data_dir, key_id="key1", user="user3"),
        "has_more": False,
    }
    first = httpx.get(f"{vary.base_url}/v1/admin/usage", headers={"Authorization": f"Bearer {admin}"}, timeout=WAIT_S)
    assert len(first.json()["data"]) == 100 and first.json()["has_more"] is True


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "100000"}, {"offset": "-1"}, {"limit": "many"}])
def test_a_bad_page_is_a_400(admin_server: tuple[Running, str], params: dict[str, str]) -> None:
    vary, admin = admin_server
    answer = httpx.get(
        f"{vary.base_url}/v1/admin/usage", params=params, headers={"Authorization": f"Bearer {admin}"}, timeout=WAIT_S
    )
    assert answer.status_code == 400 and set(answer.json()["error"]) == {"message", "type", "param", "code"}
