"""What a hosted request holds while the provider works: the input's bytes (the provider gets those), never
its decode. The service decodes every input before a provider is called (an image vary refuses costs no
provider call) and classifies it when the policy says so, then lets the pixels go: a 4096 px input is
64 MiB decoded, for as long as a provider takes. Measured in-process, against a provider on loopback that
holds its answer until the test has looked."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import png_bytes
from tests.fakes.providers import FakeProvider
from tests.harness import catalogue, hosted
from vary.engines.diffusion import Placement
from vary.imaging import ImageDecoder, ImageRules, InputImage, MiB
from vary.request import VariationRequest
from vary.safety.checks import ContentChecks
from vary.safety.policy import SafetyPolicy
from vary.service.catalogue import read_catalogue
from vary.service.registry import ModelRegistry
from vary.service.variations import Links, VariationService
from vary.state.local_store import LocalImageStore
from vary.state.signing import UrlSigner

KEY = "sk-upstream-memory"
SIDE = 1536  # no other image in the test process has this size
WAIT_S = 60.0


def decoded_inputs() -> list[Image.Image]:
    """Every image of the input's size still alive in this process."""
    gc.collect()
    # type(), not isinstance(): some objects' __class__ is a property that warns (torch's deprecated aliases).
    return [o for o in gc.get_objects() if issubclass(type(o), Image.Image) and o.size == (SIDE, SIDE)]


@pytest.mark.parametrize("check", ["off", "input"])
def test_a_hosted_call_holds_the_input_bytes_and_not_their_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", KEY)
    provider = FakeProvider(key=KEY).start()
    released = threading.Event()
    provider.fail("openai", ("hold", released))
    path = tmp_path / "vary.toml"
    path.write_text(catalogue(hosted("up", "openai-compatible", f"{provider.base_url}/v1", key_env="UPSTREAM_KEY")))
    registry = ModelRegistry.from_catalogue(
        read_catalogue(path),
        placement=Placement(),
        safety=SafetyPolicy(check=check, threshold=1.0),  # type: ignore[arg-type]
    )
    service = VariationService(
        registry,
        ImageDecoder(ImageRules(max_bytes=16 * MiB)),
        LocalImageStore(tmp_path / "images"),
        Links(UrlSigner(b"s" * 32), ttl_seconds=60),
        checks=ContentChecks(),
    )
    request = VariationRequest(images=(InputImage(png_bytes(SIDE)),), n=1, size=256, response_format="b64_json")

    async def while_the_provider_holds() -> list[Image.Image]:
        work = asyncio.create_task(service.create(request, base_url="http://vary.test"))
        deadline = time.monotonic() + WAIT_S
        while not provider.calls_to("openai"):
            assert time.monotonic() < deadline and not work.done(), "the provider was never called"
            await asyncio.sleep(0.02)  # poll, bounded by the deadline
        alive = decoded_inputs()
        released.set()
        result = await work
        assert len(result.pngs) == 1
        for provider_target in registry.hosted:
            await provider_target.aclose()
        return alive

    try:
        alive = asyncio.run(while_the_provider_holds())
    finally:
        released.set()
        provider.stop()
    assert alive == [], f"{len(alive)} decoded input(s) held during the provider's call"
