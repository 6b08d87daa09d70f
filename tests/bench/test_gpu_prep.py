"""The GPU run's pieces, fast: the wheel list, the FLOP accounting, the plan and its budget, the record, the
summary, and the three contenders agreeing image for image on the tiny twins; then the whole command end to end
(`bench/gpu_run.sh --smoke` from a clean clone, marked gpu_smoke: about 2 minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from bench import contenders, flops, suite, summary, wheels
from bench.record import COLUMNS, Record
from vary.engines.diffusion import Placement
from vary.engines.flux_redux import FluxReduxEngine, real_configs
from vary.engines.kandinsky import KandinskyVariationEngine

ROOT = Path(__file__).resolve().parents[2]

# --- the wheels -----------------------------------------------------------------------------------


def test_the_wheel_list_starts_from_pyproject_and_the_image_list_is_read() -> None:
    names = {r.name for r in wheels.project_requirements()}
    assert {"diffusers", "fastapi", "uvicorn", "openai", "sqlalchemy"} <= names
    image = wheels.image_packages()
    assert str(image["torch"]) == "2.11.0" and str(image["transformers"]) == "5.17.0"
    assert image["pillow"] is None  # listed, version not recorded
    assert "diffusers" not in image and "fastapi" not in image
    # Markers are read for the GPU machine's CPython 3.12 on Linux, whatever runs this.
    assert not wheels.applies(Requirement("tomli>=2; python_version < '3.11'"))
    assert wheels.applies(Requirement("uvloop; sys_platform != 'win32'"))
    assert wheels.applies(Requirement("httptools; extra == 'standard'"), {"standard"})
    assert not wheels.applies(Requirement("httptools; extra == 'standard'"))


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        metadata = "".join(f"Requires-Dist: {r}\n" for r in requires)
        archive.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\n{metadata}")


def test_collect_follows_requirements_and_stops_at_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk, with pip replaced by a folder of wheels: the image's packages are not carried (unless their recorded
    version is too old), extras are followed, each package is pinned to the version installed here if it fits."""
    index = tmp_path / "index"
    index.mkdir()
    fake_wheel(index, "server", "2.0", ["speedups; extra == 'fast'", "torch>=2", "helper>=1"])
    fake_wheel(index, "speedups", "1.0", ["numpy"])
    fake_wheel(index, "helper", "1.5", [])
    fake_wheel(index, "oldlib", "3.0", [])
    asked: list[list[str]] = []

    def download(pins: list[str], into: Path) -> None:
        asked.append(sorted(pins))
        for pin in pins:
            name = Requirement(pin).name
            shutil.copy(next(index.glob(f"{name}-*.whl")), into)

    monkeypatch.setattr(wheels, "pip_download", download)
    monkeypatch.setattr(wheels, "installed_version", lambda name: None)
    image = {"torch": None, "numpy": None, "oldlib": wheels.Version("1.0")}
    into = tmp_path / "out"
    into.mkdir()
    roots = [Requirement("server[fast]>=2"), Requirement("oldlib>=2"), Requirement("win; sys_platform == 'win32'")]
    carried = wheels.collect(roots, image, into)
    assert sorted(carried) == ["helper", "oldlib", "server", "speedups"]
    assert asked == [["oldlib>=2", "server>=2"], ["helper>=1", "speedups"]]


def test_the_wheel_folder_when_present_covers_vary(tmp_path: Path) -> None:
    """What bench/gpu_wheels.sh left in .gpu-wheels installs together for the GPU's Python and, with the image,
    meets every requirement (skipped where the folder was never filled: it needs PyPI)."""
    found = sorted((ROOT / ".gpu-wheels").glob("*.whl"))
    if not found:
        pytest.skip("no .gpu-wheels here: bench/gpu_wheels.sh fills it")
    assert sum(w.stat().st_size for w in found) < wheels.WHEELS_BUDGET_BYTES
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target"]
    subprocess.run([*pip, str(site), *wheels.PIP_TARGET, *map(str, found)], check=True)
    assert wheels.check(site) == []


# --- the arithmetic -------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "transformer_tflop", "image_tflop"), [(512, 32.9, 134.0), (1024, 88.9, 366.0)])
def test_flux_flops_match_the_hand_count(side: int, transformer_tflop: float, image_tflop: float) -> None:
    """FLUX.1 [schnell] with Redux: 4 transformer passes over image, 512 T5 and 729 Redux tokens, and the VAE."""
    configs = real_configs("schnell")
    request = flops.flux(configs, side, steps=4)
    one_pass = (request.per_image - flops.flux(configs, side, steps=0).per_image) / 4
    assert one_pass == pytest.approx(flops.flux_transformer_analytic(configs, side), rel=1e-3)
    assert one_pass / 1e12 == pytest.approx(transformer_tflop, rel=0.01)
    assert request.per_image / 1e12 == pytest.approx(image_tflop, rel=0.01)
    assert request.of(10) == pytest.approx(10 * request.per_image + request.per_input)
    assert 0.5e12 < request.per_input < 1.5e12  # SigLIP so400m at 384 px and the embedder, once per request


def test_kandinsky_request_flops_from_the_shipped_configs() -> None:
    request = flops.kandinsky(None, 1024, steps=25)
    assert request.per_image / 1e12 == pytest.approx(195, rel=0.02)
    assert request.per_input / 1e12 == pytest.approx(0.97, rel=0.05)  # ViT-bigG/14 at 224 px


# --- the plan, the record, the summary ------------------------------------------------------------


def test_the_plan_runs_every_case_with_its_bases_first() -> None:
    plan = [(case.name, who) for case, who in suite.plan()]
    assert plan[:4] == [("512 n=1", who) for who in ("diffusers", "vary", "http-b64_json", "http-url")]
    assert ("1024 n=10", "diffusers") in plan and ("1024 n=1 c=16", "http-url") in plan
    assert ("1024 n=1 c=16", "diffusers") not in plan
    assert plan.index(("1024 n=1 c=16", "vary")) < plan.index(("1024 n=1 c=16", "http-url"))


def test_predictions_grow_with_the_work() -> None:
    subject = suite.Subject("k", None, lambda side, n: n * side**2 * 1e6, rate=1e12)  # type: ignore[arg-type]
    small, big, many = suite.CASES[0], suite.CASES[2], suite.CASES[3]
    assert subject.predict(small, 10) < subject.predict(big, 1)
    assert subject.predict(many, 32) > subject.predict(many, 16)
    # A rate reached on small calls predicts larger ones, never the other way round.
    before_small, before_big = subject.predict(small, 10), subject.predict(big, 1)
    slow = contenders.Timing(latencies_ms=[1000.0], images=1, wall_s=10.0)
    subject.learn(big, slow)
    assert subject.predict(small, 10) == before_small and subject.predict(big, 1) > before_big
    assert subject.rate_for(many) == subject.reached[1024**2 * 10]


def test_the_record_is_on_disk_after_every_row(tmp_path: Path) -> None:
    record = Record(tmp_path, "a machine")
    record.row(side=512, case="vary", n=1, images_per_s=2.0, model="m")
    written = json.loads((tmp_path / "results.json").read_text())
    assert list(written["rows"][0])[: len(COLUMNS)] == list(COLUMNS)
    assert written["rows"][0]["machine"] == "a machine" and written["rows"][0]["model"] == "m"
    record.skip("a stage", "no time")
    assert json.loads((tmp_path / "results.json").read_text())["skipped"] == [{"stage": "a stage", "why": "no time"}]


def row(case: str, side: int, n: int, **values: object) -> dict[str, object]:
    base = {"side": side, "case": case, "n": n, "images_per_s": 1.0, "p50_ms": 100.0, "p95_ms": 120.0,
            "fraction_of_limit": None, "speedup_vs_tuned": None, "overhead_fraction": None, "model": "m"}  # fmt: skip
    return {**base, **values}


def test_the_summary_says_which_goals_were_met() -> None:
    rows = [
        row("vary", 1024, 10, fraction_of_limit=0.55, speedup_vs_tuned=1.1),
        row("vary", 512, 1, p50_ms=140.0),
        row("http-b64_json", 512, 1, p50_ms=160.0, overhead_fraction=0.02),
    ]
    lines = summary.goals(rows)
    assert "- m: 1024 n=10: at least 50% of the arithmetic limit: met (55.0%)" in lines
    assert "- m: 1024 n=10: at least 1.25x tuned diffusers: missed (1.10x)" in lines
    assert "- m: HTTP overhead at most 3% (worst case): met (2.0%)" in lines
    assert "- m: 512 n=1 p50 at most 150 ms (vary; over HTTP): missed (160 ms)" in lines
    text = summary.markdown({"machine": "x", "rows": rows, "notes": ["a note"], "skipped": []})
    assert "| m | 1024 n=10 | vary |" in text and "- a note" in text


# --- the contenders on the tiny twins -------------------------------------------------------------


@pytest.mark.parametrize("engine_type", [KandinskyVariationEngine, FluxReduxEngine])
def test_tuned_diffusers_and_vary_render_the_same_images(engine_type: type, tmp_path: Path) -> None:
    engine = engine_type.tiny_random(placement=Placement("cpu"))
    engine.load()
    tuned = contenders.Tuned(engine).run(512, 2, 1, 1, seed=3)
    in_process = contenders.InProcess(engine, contenders.bench_settings(tmp_path))
    try:
        mine = in_process.run(512, 2, 1, 1, seed=3)
    finally:
        in_process.close()
    assert tuned.first is not None and mine.first is not None
    # The same work: equal, but for a rare rounding of one level where float32 sums in another order.
    distance = np.abs(tuned.first.astype(np.int16) - mine.first.astype(np.int16))
    assert distance.max() <= 1 and (distance > 0).mean() < 0.001
    assert mine.images == 2 and mine.batch_images == [2] and len(mine.latencies_ms) == 1


def test_over_http_the_openai_sdk_gets_the_in_process_images(tmp_path: Path) -> None:
    """vary's server in a thread, the SDK in its own process, b64_json and url: the same image as in-process."""
    engine = KandinskyVariationEngine.tiny_random(placement=Placement("cpu"))
    engine.load()
    settings = contenders.bench_settings(tmp_path / "data")
    in_process = contenders.InProcess(engine, settings)
    try:
        reference = in_process.run(256, 1, 1, 1, seed=5).first
    finally:
        in_process.close()
    assert reference is not None
    with contenders.serving(engine, settings) as base_url, contenders.client_process(base_url) as clients:
        b64 = contenders.OverHttp(base_url, engine.info.id, "b64_json", clients).run(256, 1, 2, 2, seed=5)
        url = contenders.OverHttp(base_url, engine.info.id, "url", clients).run(256, 1, 1, 1, seed=5)
    assert b64.errors == [] and url.errors == []
    assert b64.images == 2 and len(b64.server_overhead_ms) == 2 and url.images == 1
    assert b64.first is not None
    # The same image, up to the CPU's float noise: exact in quiet runs, but in a loaded run 0.35% of the pixels
    # came 1 level off (the server renders on its own thread, and CPU reductions are not bitwise stable across
    # threads). A wrong path (a resize, a colour conversion, another seed) is off by far more, almost everywhere.
    expected = engine.finish(reference[None], 256)[0]
    off = np.abs(b64.first.astype(np.int16) - expected.astype(np.int16))
    assert off.max() <= 1 and np.count_nonzero(off) <= 0.01 * off.size, (off.max(), np.count_nonzero(off))


def test_placement_checks_its_compile_mode_and_compiles_the_decoder_in_place() -> None:
    with pytest.raises(ValueError, match="compile_mode"):
        Placement(compile=True, compile_mode="max-speed")
    engine = KandinskyVariationEngine.tiny_random(
        placement=Placement("cpu", compile=True, compile_mode="reduce-overhead", compile_decoder=True)
    )
    engine.load()  # compiling is lazy: nothing runs here
    decoder = engine.pipeline.movq.decoder
    assert decoder._compiled_call_impl is not None  # nn.Module.compile: the module itself, its names unchanged
    assert not any(key.startswith("_orig_mod") for key in engine.pipeline.movq.state_dict())
    assert type(engine.pipeline.unet).__name__ == "OptimizedModule"


# --- the whole command, opt-in --------------------------------------------------------------------


@pytest.mark.gpu_smoke
def test_gpu_run_smoke_from_a_clean_clone(tmp_path: Path) -> None:
    """bench/gpu_run.sh --smoke as a GPU session would run it, from a fresh clone of this commit with the wheel
    folder beside it: every case by every contender measured, nothing skipped, no errors. About 2 minutes on 2
    cores (`-m "not gpu_smoke"` leaves it out); without a filled .gpu-wheels here it fetches the wheels first."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    for folder in (".gpu-wheels", ".gpu-rehearsal"):
        if list((ROOT / folder).glob("*.whl")):
            shutil.copytree(ROOT / folder, clone / folder)
    if not (clone / ".gpu-wheels").is_dir():  # fetched into the clone, as bench/gpu_wheels.sh --rehearsal does
        subprocess.run([sys.executable, "-m", "bench.wheels"], cwd=clone, check=True)
        subprocess.run([sys.executable, "-m", "bench.wheels", "--stand-ins", ".gpu-rehearsal"], cwd=clone, check=True)
    env = {**os.environ, "VARY_GPU_PYTHON": sys.executable, "VARY_GPU_SITE": str(tmp_path / "site")}
    env.pop("PYTHONPATH", None)  # the clone's own src/, as on the GPU machine
    out = tmp_path / "out"
    subprocess.run(["bash", "bench/gpu_run.sh", "--smoke", str(out)], cwd=clone, env=env, check=True, timeout=900)
    results = json.loads((out / "results.json").read_text())
    measured = {(r["model"], f"{r['side']} n={r['n']}" + (f" c={r['concurrency']}" if r["concurrency"] > 1 else ""),
                 r["case"]) for r in results["rows"]}  # fmt: skip
    expected = {(model, case.name, who) for model in suite.BUILDERS for case, who in suite.plan()}
    assert measured == expected
    assert results["skipped"] == [] and all(r["errors"] == [] for r in results["rows"])
    assert "every requirement of vary is met" in (out / "log.txt").read_text()
    assert "| kandinsky-2.2 | 1024 n=10 | vary |" in (out / "results.md").read_text()
