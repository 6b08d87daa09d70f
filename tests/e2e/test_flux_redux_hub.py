"""FLUX.1 Redux from a Hub on loopback laid out as the real repositories are: the licence refused before anything,
the gated repository named with what the token needs, exactly the declared files pulled, then a start offline.

The fake Hub serves black-forest-labs/FLUX.1-schnell (open) and FLUX.1-Redux-dev (gated) in their real
layout, from the tiny twin: the transformer in three shards and an index, a model_index.json that names
the text encoders, and files vary must not fetch (the text encoders and tokenizers, the single-file
originals).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from safetensors.torch import load_file, save_file

from tests.conftest import create_key, png_bytes
from tests.e2e.test_first_run import cached_files, hub_env, vary
from tests.fakes.hub import FLUX_REDUX_FILES, FLUX_SCHNELL_FILES, FakeHub
from vary.engines.flux_redux import FLUX_DEV_LICENSE, REDUX_REPO, SCHNELL_REPO, FluxReduxEngine
from vary.testing import ServerProcess

TOKEN = "hf_accepted"
CATALOGUE = f"""
[[models]]
name = "flux-redux"
engine = "flux-redux"
accept_license = "{FLUX_DEV_LICENSE.id}"
[models.options]
steps = 2
min_render_side = 64
max_render_side = 64
"""


def shard(folder: Path, parts: int) -> None:
    """The transformer as the Hub stores FLUX.1's: `parts` safetensors files and their index."""
    single = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(single)
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    for k in range(parts):
        file = f"diffusion_pytorch_model-{k + 1:05d}-of-{parts:05d}.safetensors"
        chosen = names[k::parts]
        save_file({name: tensors[name] for name in chosen}, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chosen, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    single.unlink()


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux-repos")
    FluxReduxEngine.tiny_random().save_pretrained(root)  # type: ignore[attr-defined]
    base, redux = root / "base", root / "redux"
    shard(base / "transformer", 3)
    index = json.loads((base / "model_index.json").read_text())
    index.update(
        text_encoder=["transformers", "CLIPTextModel"],
        text_encoder_2=["transformers", "T5EncoderModel"],
        tokenizer=["transformers", "CLIPTokenizer"],
        tokenizer_2=["transformers", "T5TokenizerFast"],
    )
    (base / "model_index.json").write_text(json.dumps(index))
    # The real repository names the torchvision-backed processor; vary loads the PIL one from the same file.
    redux_index = json.loads((redux / "model_index.json").read_text())
    redux_index["feature_extractor"] = ["transformers", "SiglipImageProcessor"]
    (redux / "model_index.json").write_text(json.dumps(redux_index))
    processor = json.loads((redux / "feature_extractor/preprocessor_config.json").read_text())
    processor["image_processor_type"] = "SiglipImageProcessor"
    (redux / "feature_extractor/preprocessor_config.json").write_text(json.dumps(processor))
    for decoy in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        shutil.copytree(redux / "image_encoder", base / decoy)
    shutil.copy(base / "vae/diffusion_pytorch_model.safetensors", base / "ae.safetensors")
    shutil.copy(redux / "image_embedder/diffusion_pytorch_model.safetensors", redux / "flux1-redux-dev.safetensors")
    for folder in (base, redux):
        (folder / "README.md").write_text("model card\n")
    return {SCHNELL_REPO: base, REDUX_REPO: redux}


def test_pull_refuses_then_names_the_gate_then_fetches_exactly_what_loads_and_serve_starts_offline(
    tmp_path: Path, repos: dict[str, Path]
) -> None:
    accept = ("--accept-license", FLUX_DEV_LICENSE.id)
    with FakeHub(repos, gated=frozenset({REDUX_REPO}), accepted_tokens=frozenset({TOKEN})) as hub:
        env = {key: value for key, value in hub_env(tmp_path, hub.url).items() if key != "HF_TOKEN"}
        refused = vary("pull", "flux-redux", env=env)
        before_acceptance = list(hub.requests)
        gated = vary("pull", "flux-redux", *accept, env=env)
        pulled = vary("pull", "flux-redux", *accept, env={**env, "HF_TOKEN": TOKEN})
    # 1. Without the licence accepted: one line naming it and the flag, and nothing asked of the Hub.
    assert refused.returncode == 2 and before_acceptance == []
    (line,) = refused.stderr.strip().splitlines()
    assert FLUX_DEV_LICENSE.name in line and f"--accept-license {FLUX_DEV_LICENSE.id}" in line
    # 2. Accepted here but not on the Hub (no token): the gated repository and what the token needs.
    assert gated.returncode == 1
    assert f"{REDUX_REPO} is gated" in gated.stdout and "HF_TOKEN" in gated.stdout
    assert f"{SCHNELL_REPO} is gated" not in gated.stdout  # FLUX.1 [schnell] is open
    (failure,) = gated.stderr.strip().splitlines()
    assert f"{REDUX_REPO} is gated: HF_TOKEN" in failure
    # 3. With a token of an account that accepted it: exactly the declared files, no text encoder.
    assert pulled.returncode == 0, pulled.stderr
    assert cached_files(tmp_path / "hf", SCHNELL_REPO) == FLUX_SCHNELL_FILES
    assert cached_files(tmp_path / "hf", REDUX_REPO) == FLUX_REDUX_FILES

    # The Hub is gone: the start reads the cache, loads the real layout without text encoders, and serves.
    catalogue = tmp_path / "models.toml"
    catalogue.write_text(CATALOGUE)
    data_dir = tmp_path / "data"
    _, key = create_key(data_dir)
    with ServerProcess(data_dir, extra_args=["--config", str(catalogue)], env={**env, "HF_HUB_OFFLINE": "0"}) as server:
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
        image = client.images.create_variation(image=png_bytes(64), n=2, size="256x256", response_format="b64_json")
        assert len(image.data) == 2 and all(datum.b64_json for datum in image.data)
        card = httpx.get(f"{server.base_url}/v1/models/flux-redux", headers={"Authorization": f"Bearer {key}"})
        log = server.log()
    assert card.json()["license"].startswith(FLUX_DEV_LICENSE.id)
    assert card.json()["controls"]["guidance_scale"] is None  # FLUX.1 [schnell] ignores it
    assert "fetching" not in log


def test_serve_without_the_licence_is_one_line_before_anything_loads(tmp_path: Path) -> None:
    env = hub_env(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    result = vary("serve", "--model", "flux-redux", "--data-dir", str(tmp_path / "data"), env=env)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("vary: --model flux-redux:") and FLUX_DEV_LICENSE.name in line
    assert "VARY_ACCEPT_LICENSE" in line and "cannot load" not in result.stderr  # refused before any load
