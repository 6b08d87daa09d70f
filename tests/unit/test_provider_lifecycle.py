"""Where each hosted provider stands (live, legacy, retired), read on a given day, said once at start for a catalogue
that uses it, and docs/gateway.md's table kept to the declarations; and the new engines' options checked at start."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest

from tests.harness import catalogue, hosted
from vary.service.catalogue import CatalogueError, lifecycle_warnings, read_catalogue
from vary.targets.hosted.provider import Lifecycle
from vary.targets.hosted.registry import provider_types

ROOT = Path(__file__).resolve().parents[2]
TODAY = datetime.date(2026, 12, 7)
# Every hosted engine, and the options that pick another service behind it, in docs/gateway.md's order.
SERVICES: list[tuple[str, dict[str, Any]]] = [
    ("openai-compatible", {}),
    ("openai-compatible", {"base_url": "http://127.0.0.1:8000/v1"}),
    ("azure-openai", {"deployment": "dalle"}),
    ("openai-gpt-image", {}),
    ("bedrock-nova-canvas", {}),
    ("bedrock-nova-canvas", {"model_id": "amazon.titan-image-generator-v2:0"}),
    ("fal", {}),
    ("replicate", {}),
    ("bfl", {}),
]


def lifecycle(engine: str, options: dict[str, Any]) -> Lifecycle:
    provider = provider_types()[engine]
    return provider.lifecycle_of(engine, provider.options_for(engine, options))


def test_a_legacy_service_reads_as_retired_once_its_end_of_life_has_passed() -> None:
    nova = Lifecycle("legacy", datetime.date(2026, 9, 30), "AWS lists it as legacy")
    assert nova.on(datetime.date(2026, 9, 29)) == "legacy" and nova.on(datetime.date(2026, 9, 30)) == "retired"
    before = nova.warning("bedrock-nova-canvas", "nova", datetime.date(2026, 9, 1))
    after = nova.warning("bedrock-nova-canvas", "nova", TODAY)
    assert before is not None and "legacy, end of life 2026-09-30" in before and "Plan to move off it" in before
    assert after is not None and "retired (its end of life as a legacy service was 2026-09-30)" in after
    assert "'nova'" in after and "bedrock-nova-canvas" in after and "AWS lists it as legacy" in after
    assert Lifecycle("live").warning("fal", "fal", TODAY) is None
    assert Lifecycle("retired").describe(TODAY) == "retired (no date announced)"


def test_each_service_s_declaration() -> None:
    read = [(lifecycle(engine, options).on(TODAY), lifecycle(engine, options).date) for engine, options in SERVICES]
    assert read == [
        ("retired", datetime.date(2026, 5, 12)),  # OpenAI's own variations went with dall-e-2
        ("live", None),  # another OpenAI-compatible server
        ("retired", None),  # Azure OpenAI's variations endpoint no longer accepts requests
        ("live", None),
        ("retired", datetime.date(2026, 9, 30)),  # Nova Canvas: legacy, past its end of life
        ("retired", datetime.date(2026, 6, 30)),  # Titan Image Generator v2
        ("live", None),
        ("live", None),
        ("live", None),
    ]
    assert {engine for engine, _ in SERVICES} == set(provider_types()), "a new engine needs its row here and in docs"


def test_docs_gateway_table_says_what_the_declarations_say() -> None:
    text = (ROOT / "docs" / "gateway.md").read_text()
    section = text[text.index("## Where each provider stands") :]
    rows = [line for line in section.splitlines() if re.match(r"\| `[a-z0-9-]+` \|", line)]
    rows = rows[: len(SERVICES)]
    assert [row.split("|")[1].strip().strip("`") for row in rows] == [engine for engine, _ in SERVICES]
    for row, (engine, options) in zip(rows, SERVICES, strict=True):
        declared = lifecycle(engine, options)
        status, date = (cell.strip() for cell in row.split("|")[3:5])
        assert status.startswith(declared.status), row
        if declared.on(TODAY) != declared.status:
            assert "past its end of life" in status and "retired" in status, row
        if declared.date is not None:
            assert date == declared.date.isoformat(), row
        else:
            assert date in ("", "no date announced"), row


def test_one_warning_a_model_whose_service_is_not_live(tmp_path: Path) -> None:
    models = [
        hosted("old-azure", "azure-openai", "http://127.0.0.1:9", deployment="gone"),
        hosted("nova", "bedrock-nova-canvas", "http://127.0.0.1:9"),
        hosted("fal", "fal", "http://127.0.0.1:9"),
        {"name": "both", "route": ["old-azure", "nova", "fal"]},
    ]
    (tmp_path / "vary.toml").write_text(catalogue(*models))
    read = read_catalogue(tmp_path / "vary.toml")
    lines = lifecycle_warnings(read, TODAY)
    assert len(lines) == 2 and "'old-azure' uses azure-openai" in lines[0] and "'nova'" in lines[1]
    assert "2026-09-30" in lines[1] and "retired" in lines[1]
    assert "legacy, end of life 2026-09-30" in lifecycle_warnings(read, datetime.date(2026, 9, 1))[1]


@pytest.mark.parametrize(
    ("engine", "options", "words"),
    [
        ("bfl", {"rehost_urls": False}, "rehost_urls"),
        ("bfl", {"safety_tolerance": 7}, "safety_tolerance"),
        ("fal", {"application": "../../etc"}, "application"),
        ("fal", {"output_format": "gif"}, "output_format"),
        ("replicate", {"upstream_model": "flux-redux-schnell"}, "upstream_model"),
        ("replicate", {"poll_interval_seconds": 0}, "poll_interval_seconds"),
        ("fal", {"max_concurrent_calls": 0}, "max_concurrent_calls"),
        ("fal", {"poll_interval_seconds": "1"}, "poll_interval_seconds"),
    ],
)
def test_a_job_provider_s_options_are_checked_at_start(
    tmp_path: Path, engine: str, options: dict[str, Any], words: str
) -> None:
    (tmp_path / "vary.toml").write_text(catalogue(hosted("up", engine, "http://127.0.0.1:9", **options)))
    with pytest.raises(CatalogueError, match=words):
        read_catalogue(tmp_path / "vary.toml")
