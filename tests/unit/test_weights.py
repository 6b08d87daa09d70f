"""Each engine's one declaration of the Hub files it loads: what `vary pull` fetches and loading reads."""

from __future__ import annotations

from pathlib import Path

from vary.engines.diffusion import Placement
from vary.engines.kandinsky import DECODER_REPO, PRIOR_REPO, KandinskyVariationEngine
from vary.engines.weights import HubFiles, WeightsUnavailable, hub_trouble
from vary.service.catalogue import model_for_spec

GPU = Placement(device="cuda", dtype="float16")
CPU = Placement(device="cpu")


def declared(spec: str, placement: Placement) -> dict[str, HubFiles]:
    return model_for_spec(spec).build(placement=placement).hub_files()


def test_kandinsky_needs_the_decoder_and_only_the_image_encoder_of_the_prior() -> None:
    files = declared("kandinsky-2.2", GPU)
    assert files["decoder"].repo_id == DECODER_REPO and files["prior"].repo_id == PRIOR_REPO
    assert set(files["prior"].files) == {
        "image_encoder/config.json",
        "image_encoder/model.safetensors",
        "image_processor/preprocessor_config.json",
    }
    assert "unet/diffusion_pytorch_model.safetensors" in files["decoder"].files  # no fp16 variant is served
    every = [name for hub in files.values() for name in hub.files]
    assert not [name for name in every if name.endswith(".bin") or "text_encoder" in name or name.startswith("prior/")]


def test_fp16_files_only_where_the_model_runs_in_float16_and_the_repository_serves_them() -> None:
    for spec in ("sdxl-ip-adapter", "stable-unclip", "stable-unclip-small"):
        on_gpu = [name for hub in declared(spec, GPU).values() for name in hub.files if name.endswith(".safetensors")]
        on_cpu = [name for hub in declared(spec, CPU).values() for name in hub.files if name.endswith(".safetensors")]
        assert any(".fp16." in name for name in on_gpu) and not any(".fp16." in name for name in on_cpu)
    sdxl = declared("sdxl-ip-adapter", GPU)
    assert sdxl["ip_adapter"].files == ("sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",)
    assert sdxl["image_encoder"].files == ("models/image_encoder/config.json", "models/image_encoder/model.safetensors")
    assert declared("sd-image-variations", GPU)["pipeline"].revision == "v2.0"


def test_tiny_twins_and_local_directories_need_nothing_from_the_hub(tmp_path: Path) -> None:
    assert declared("tiny-random", CPU) == {}
    KandinskyVariationEngine.tiny_random().save_pretrained(tmp_path)
    assert KandinskyVariationEngine(name="local", weights=str(tmp_path)).hub_files() == {}


def test_the_one_line_names_the_model_the_file_and_the_ways_out() -> None:
    missing = WeightsUnavailable(
        "kandinsky-2.2", HubFiles(PRIOR_REPO, ("a",)), "image_encoder/model.safetensors", "why"
    )
    line = missing.line()
    assert (
        "\n" not in line
        and "kandinsky-2.2" in line
        and PRIOR_REPO in line
        and "image_encoder/model.safetensors" in line
    )
    for way_out in ("vary pull kandinsky-2.2", "HF_ENDPOINT", "--model tiny-random", "--model DIR"):
        assert way_out in line


def test_hub_trouble_reads_the_cause_of_a_chain() -> None:
    try:
        try:
            raise TimeoutError("timed out")
        except TimeoutError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert "did not answer within" in hub_trouble(outer)
