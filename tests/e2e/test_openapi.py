"""vary's own OpenAPI document agrees with OpenAI's for every field OpenAI defines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import yaml

from vary.api.variation_form import CONTROLS
from vary.testing import ServerProcess

OPENAI_SPEC = Path(__file__).parent.parent / "data" / "openai-images-variations.yaml"


def _enum(schema: dict[str, Any]) -> list[str] | None:
    if "enum" in schema:
        return list(schema["enum"])
    for option in schema.get("anyOf", []):
        if "enum" in option and len(option["enum"]) > 1:
            return list(option["enum"])
    return None


def test_variation_request_schema_matches_openai(server: ServerProcess) -> None:
    ours = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    theirs = yaml.safe_load(OPENAI_SPEC.read_text())

    operation = ours["paths"]["/v1/images/variations"]["post"]
    assert operation["operationId"] == theirs["paths"]["/images/variations"]["post"]["operationId"]
    our_schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    their_schema = theirs["components"]["schemas"]["CreateImageVariationRequest"]

    assert our_schema["required"] == their_schema["required"] == ["image"]
    # OpenAI's fields, plus exactly vary's documented controls.
    assert set(our_schema["properties"]) - set(their_schema["properties"]) == CONTROLS
    assert set(their_schema["properties"]) <= set(our_schema["properties"])
    for name, theirs_field in their_schema["properties"].items():
        ours_field = our_schema["properties"][name]
        assert _enum(ours_field) == _enum(theirs_field), name
        assert ours_field.get("default") == theirs_field.get("default"), name
        for bound in ("minimum", "maximum"):
            if bound in theirs_field:
                found = ours_field.get(bound) or next(
                    (o[bound] for o in ours_field.get("anyOf", []) if bound in o), None
                )
                assert found == theirs_field[bound], (name, bound)
    assert our_schema["properties"]["image"]["format"] == "binary"

    response_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    images_response = ours["components"]["schemas"][response_ref.rsplit("/", 1)[1]]
    assert set(images_response["required"]) == {"created", "data"}
    for status in ("400", "401", "404", "429"):
        assert status in operation["responses"]


def test_the_bearer_scheme_is_declared_as_openai_declares_it(server: ServerProcess) -> None:
    """So that /docs has an Authorize button and its "Try it out" sends the key."""
    ours = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    theirs = yaml.safe_load(OPENAI_SPEC.read_text())
    scheme = ours["components"]["securitySchemes"]["ApiKeyAuth"]
    assert {k: scheme[k] for k in ("type", "scheme")} == theirs["components"]["securitySchemes"]["ApiKeyAuth"]
    assert ours["paths"]["/v1/images/variations"]["post"]["security"] == theirs["security"] == [{"ApiKeyAuth": []}]
    assert ours["paths"]["/v1/models"]["get"]["security"] == [{"ApiKeyAuth": []}]
    assert "security" not in ours["paths"]["/v1/files/{filename}"]["get"]  # the signature is the credential
