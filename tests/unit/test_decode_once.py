"""Each input image is decoded once per request: by the content check when there is one (a local model first
in line prepares from that decode), by the local model otherwise, by the check of an image a provider is sent.
Counted in-process by spying on the one function every decode goes through, `vary.imaging.load_checked`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import png_bytes
from vary import imaging
from vary.imaging import InputImage
from vary.request import VariationRequest
from vary.service.runtime import running_services
from vary.settings import Settings


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every decode from here on counted in the returned list (the real function still does the work)."""
    calls: list[int] = []
    real: Callable[..., Any] = imaging.load_checked

    def load_checked(data: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(imaging, "load_checked", load_checked)
    return calls


@pytest.mark.parametrize("check", ["off", "input"])
def test_a_local_model_s_input_is_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: str) -> None:
    settings = Settings(data_dir=tmp_path, model="tiny-random", safety_check=check, safety_threshold=1.0)
    image = png_bytes(96, mode="RGBA")  # transparent: the check looks at three views of it, from one decode

    async def one_request() -> list[int]:
        async with running_services(settings) as services:
            calls = counting(monkeypatch)  # after the warm-up, which decodes nothing of the request's
            request = VariationRequest(images=(InputImage(image),), n=1, size=256, response_format="b64_json")
            result = await services.variations.create(request, base_url="http://vary.test")
            assert len(result.pngs) == 1
            return calls

    assert asyncio.run(one_request()) == [len(image)]
