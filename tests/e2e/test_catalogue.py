"""The catalogue and the controls end to end: a live server with every engine's tiny twin, driven by the openai SDK."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.harness import Running, catalogue, decode_png, local, png_bytes, serve

CONFIG = catalogue(
    local("kandinsky"),
    local("sdxl", "sdxl-ip-adapter", aliases=["sdxl-plus"], defaults={"steps": 3}),
    local("unclip", "stable-unclip", load="lazy", options={"noise_level": 100}),
    local("sd-variations", "sd-image-variations", license="creativeml-openrail-m (as configured)"),
    local("flux", "flux-redux"),  # random weights: no licence to accept
    # empty-dir exists, so the file is valid, but holds no weights
    local("broken", "stable-unclip", weights="empty-dir", load="lazy"),
    default="kandinsky",
)
MODELS = ("kandinsky", "sdxl", "unclip", "sd-variations", "flux")


@pytest.fixture(scope="module")
def catalogue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("catalogue")
    (root / "empty-dir").mkdir()
    with serve(root, catalogue=CONFIG) as vary:
        yield vary


@pytest.fixture(scope="module")
def client(catalogue_server: Running) -> OpenAI:
    return catalogue_server.client()


def images(client: OpenAI, model: str, n: int = 1, **controls: object) -> list[np.ndarray]:
    result = client.images.create_variation(
        image=png_bytes(64), model=model, n=n, size="256x256", response_format="b64_json", extra_body=controls or None
    )
    return [np.asarray(decode_png(base64.b64decode(item.b64_json or ""))) for item in result.data]


def test_the_lazy_model_loads_on_its_first_request(catalogue_server: Running, client: OpenAI) -> None:
    server = catalogue_server.server
    assert "loaded model kandinsky" in server.log() and "loaded model sdxl" in server.log()
    assert "loaded model unclip" not in server.log()
    assert len(images(client, "unclip")) == 1
    assert "loaded model unclip" in server.log()


@pytest.mark.parametrize("model", MODELS)
def test_every_engine_serves_variations_of_the_asked_size(client: OpenAI, model: str) -> None:
    out = images(client, model, n=2)
    assert [img.shape for img in out] == [(256, 256, 3)] * 2


@pytest.mark.parametrize("model", MODELS)
def test_a_seed_repeats_its_images_and_each_of_n_differs(client: OpenAI, model: str) -> None:
    first = images(client, model, n=3, seed=1234)
    again = images(client, model, n=3, seed=1234)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    assert not np.array_equal(first[0], images(client, model, seed=1235)[0])


@pytest.mark.parametrize("model", ["kandinsky", "sdxl", "sd-variations", "flux"])
def test_strength_changes_the_output(client: OpenAI, model: str) -> None:
    full = images(client, model, seed=7, steps=8)[0]
    kept = images(client, model, seed=7, steps=8, strength=0.5)[0]
    assert np.abs(full.astype(int) - kept).mean() > 1


def test_a_model_without_img2img_refuses_strength(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        images(client, "unclip", strength=0.5)
    assert refused.value.body == {
        "message": "The model 'unclip' has no img2img path, so 'strength' must be 1 (the default).",
        "type": "invalid_request_error",
        "param": "strength",
        "code": None,
    }


def test_the_seed_used_is_returned_and_replays_the_request(client: OpenAI) -> None:
    raw = client.images.with_raw_response.create_variation(
        image=png_bytes(64), model="kandinsky", size="256x256", response_format="b64_json"
    )
    seed = int(raw.headers["x-vary-seed"])
    first = raw.parse().data[0].b64_json
    assert images(client, "kandinsky", seed=seed)[0].tobytes() == decode_png(base64.b64decode(first or "")).tobytes()


def test_models_list_shows_every_model_with_its_licence(client: OpenAI) -> None:
    models = {m.id: m.model_dump() for m in client.models.list()}
    assert set(models) == {*MODELS, "broken", "sdxl-plus", "dall-e-2"}
    assert models["kandinsky"]["license"] == "apache-2.0"
    assert models["sdxl"]["license"] == "openrail++ (SDXL base 1.0), apache-2.0 (IP-Adapter)"
    assert models["unclip"]["license"] == "openrail++"
    assert models["sd-variations"]["license"] == "creativeml-openrail-m (as configured)"
    assert models["flux"]["license"] == "flux-1-dev-non-commercial (FLUX.1 Redux [dev]), apache-2.0 (FLUX.1 [schnell])"
    assert models["flux"]["controls"]["guidance_scale"] is None and models["flux"]["controls"]["steps"]["default"] == 2
    assert models["dall-e-2"]["parent"] == "kandinsky" and models["sdxl-plus"]["parent"] == "sdxl"
    assert all("noise" in m["description"] for name, m in models.items() if name != "broken")


def test_a_model_that_fails_to_load_is_a_503_and_the_others_keep_serving(
    catalogue_server: Running, client: OpenAI
) -> None:
    for _ in range(2):  # each request tries again, and fails the same way
        with pytest.raises(openai.InternalServerError) as failed:
            images(client, "broken")
        assert failed.value.status_code == 503
        assert failed.value.body == {
            "message": "The model `broken` could not be loaded. Retry later; the server's log says why.",
            "type": "server_error",
            "param": "model",
            "code": "model_unavailable",
        }
    assert "empty-dir" not in str(failed.value.body)
    assert "loading model broken from" in catalogue_server.server.log()
    assert len(images(client, "kandinsky")) == 1


def test_a_bad_config_stops_the_server_with_one_clear_line(
    tmp_path: Path, start_server: Callable[..., Running]
) -> None:
    with pytest.raises(RuntimeError) as failed:
        start_server(catalogue=catalogue({"name": "a", "engine": "dalle-3"}), key=False)
    assert f"vary: {tmp_path / 'vary.toml'}: model 'a': unknown engine 'dalle-3'" in str(failed.value)
