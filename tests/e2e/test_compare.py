"""Several models side by side: `vary create --model a,b,c` and its contact sheet, against a live server whose
catalogue has two local models, a hosted one (a fake OpenAI on loopback) and one whose content policy refuses
every input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import create_key, decode_png
from tests.fakes.providers import FakeProvider
from vary.cli.contact_sheet import Row, layout
from vary.testing import ServerProcess

SECRET = "sk-fake-upstream-compare-0123456789"
LOCAL = ("tiny-random", "tiny-random-sd-image-variations")
MODELS = (*LOCAL, "hosted", "refused")


@dataclass
class Served:
    server: ServerProcess
    key: str
    provider: FakeProvider


def catalogue(provider: FakeProvider) -> str:
    return f"""
default = "tiny-random"

[[models]]
name = "tiny-random"
engine = "kandinsky-2.2"
weights = "tiny-random"

[[models]]
name = "tiny-random-sd-image-variations"
engine = "sd-image-variations"
weights = "tiny-random"

[[models]]
name = "hosted"
engine = "openai-compatible"
license = "the provider's terms"
[models.options]
base_url = "{provider.base_url}/v1"
api_key_env = "FAKE_OPENAI_KEY"
max_attempts = 1

[[models]]
name = "refused"
route = ["tiny-random"]
[models.safety]
check = "input"
threshold = 0
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("compare")
    provider = FakeProvider(key=SECRET).start()
    (root / "vary.toml").write_text(catalogue(provider))
    data_dir = root / "data"
    key = create_key(data_dir)[1]
    server = ServerProcess(
        data_dir, extra_args=["--catalogue", str(root / "vary.toml")], env={"FAKE_OPENAI_KEY": SECRET}
    ).start()
    yield Served(server, key, provider)
    server.stop()
    provider.stop()


def vary_create(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VARY_SERVER": served.server.base_url, "VARY_API_KEY": served.key}
    command = [sys.executable, "-m", "vary", "create", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def photo(path: Path) -> Path:
    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_one_contact_sheet_of_every_model_for_the_same_input_and_seed(served: Served, tmp_path: Path) -> None:
    source = photo(tmp_path / "otter.jpg")
    out = tmp_path / "out"
    done = vary_create(
        served, str(source), "--model", ",".join(MODELS), "--seed", "42", "-n", "2", "--size", "256x256",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # one model refused: said, and the status says so
    written = [Path(line) for line in done.stdout.splitlines()]
    expected = [out / f"otter-{model}-variation-{k}.png" for model in (*LOCAL, "hosted") for k in (1, 2)]
    assert written == [*expected, out / "otter-contact-sheet-1.png"]
    assert all(decode_png(path.read_bytes()).size == (256, 256) for path in expected)
    stderr = done.stderr
    assert "  tiny-random: 2 in " in stderr and ", seed 42" in stderr
    assert "  hosted: 2 in " in stderr and "the provider's own seed" in stderr  # the fake reports none
    assert "  refused: refused (400): Your input image may contain content that is not allowed" in stderr
    assert "Traceback" not in stderr
    # Requests to the hosted model went out once, with the input (the fake checks the key).
    assert len(served.provider.calls_to("openai")) >= 1

    # The same seed as a single request with that model gives the same images: the comparison is fair.
    alone = vary_create(served, str(source), "--model", "tiny-random", "--seed", "42", "-n", "2", "--size", "256x256",
                        "--out", str(tmp_path / "alone"))  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    single = [Path(line) for line in alone.stdout.splitlines()]
    assert [p.read_bytes() for p in single] == [p.read_bytes() for p in expected[:2]]

    # The sheet: the input's row, then a row per model; each variation pasted where the layout puts it.
    sheet = decode_png(written[-1].read_bytes()).convert("RGB")
    rows = [Row(model, "", [Image.new("RGB", (256, 256))] * (0 if model == "refused" else 2)) for model in MODELS]
    where = layout(256, 1, rows)
    assert sheet.height == where.height and sheet.width >= where.width
    for row, model in enumerate(MODELS, start=1):
        for column in range(2 if model != "refused" else 0):
            x, y = where.tile_at(row, column)
            tile = sheet.crop((x, y, x + 256, y + 256))
            made = decode_png((out / f"otter-{model}-variation-{column + 1}.png").read_bytes()).convert("RGB")
            assert np.array_equal(np.asarray(tile), np.asarray(made)), (model, column)
    x, y = where.tile_at(len(MODELS), 0)  # the refused model's tile is the pale red of a refusal
    assert sheet.getpixel((x + 128, y + 250)) == (0xFD, 0xE2, 0xE2)


def test_without_a_seed_one_is_drawn_and_shared(served: Served, tmp_path: Path) -> None:
    source = photo(tmp_path / "a.png")
    done = vary_create(served, str(source), "--model", ",".join(LOCAL), "--size", "256x256", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    seeds = {line.rsplit("seed ", 1)[1] for line in done.stderr.splitlines() if line.startswith("  tiny-random")}
    assert len(seeds) == 1 and seeds.pop().isdigit()
    sheet = Path(done.stdout.splitlines()[-1])
    assert sheet.name == "a-contact-sheet-1.png" and decode_png(sheet.read_bytes()).format == "PNG"


def test_model_lists_that_cannot_work_are_refused_before_any_request(served: Served, tmp_path: Path) -> None:
    source = photo(tmp_path / "a.png")
    for given, said in (("a,,b", "has an empty name"), ("a,a", "names a model twice")):
        done = vary_create(served, str(source), "--model", given)
        assert done.returncode == 2 and said in done.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "vary", "create", str(source), "--model", ",".join(LOCAL), "--api-key", "vary-no",
         "--server", served.server.base_url, "--out", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 1 and "vary: the server refused the request (401)" in wrong.stderr
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_the_sheet_makes_room_for_long_labels() -> None:
    from vary.cli.contact_sheet import contact_sheet

    rows = [Row("a-model-with-a-very-long-name-indeed", "CreativeML OpenRAIL-M · 12.3 s · seed 2147483000", [])]
    rows.append(Row("short", "x", [Image.new("RGB", (64, 64), "red")]))
    sheet = contact_sheet("t", [("in.png", Image.new("RGB", (64, 64), "blue"))], rows, 64)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    assert sheet.width > 64 + 2 * 16  # wider than one tile: the labels fit
