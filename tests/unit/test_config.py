"""The TOML model catalogue: what a good file gives, and a clear one-line error for every bad one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vary.engines.diffusion import Placement
from vary.safety.policy import SafetyPolicy
from vary.service.catalogue import Catalogue, CatalogueEntry, CatalogueError, catalogue_for, read_catalogue
from vary.service.registry import ModelRegistry

GOOD = """
default = "sdxl"

[[models]]
name = "kandinsky"
engine = "kandinsky-2.2"
weights = "tiny-random"
aliases = ["k22"]

[[models]]
name = "sdxl"
engine = "sdxl-ip-adapter"
weights = "stabilityai/stable-diffusion-xl-base-1.0"
load = "lazy"
license = "my-licence"
[models.defaults]
steps = 20
guidance_scale = 6.5
[models.options]
ip_adapter_scale = 0.7
variant = "fp16"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vary.toml"
    path.write_text(text)
    return path


def test_a_good_file(tmp_path: Path) -> None:
    catalogue = read_catalogue(write(tmp_path, GOOD))
    kandinsky, sdxl = catalogue.models
    assert catalogue.default == "sdxl"
    assert (kandinsky.engine, kandinsky.weights, kandinsky.aliases, kandinsky.eager) == (
        "kandinsky-2.2",
        "tiny-random",
        ("k22",),
        True,
    )
    assert (sdxl.weights, sdxl.eager, sdxl.license) == ("stabilityai/stable-diffusion-xl-base-1.0", False, "my-licence")
    assert sdxl.options == {"steps": 20, "guidance_scale": 6.5, "ip_adapter_scale": 0.7, "variant": "fp16"}
    # dall-e-2 goes to the default model unless the file gives it to one.
    assert catalogue.aliases() == {"k22": "kandinsky", "dall-e-2": "sdxl"}


def test_the_engine_gets_the_file_s_defaults_and_options_and_the_registry_its_names(tmp_path: Path) -> None:
    catalogue = read_catalogue(write(tmp_path, GOOD))
    engine = catalogue.models[1].build(overrides={"guidance_scale": None, "sampler": "ddpm"})
    assert (engine.options.steps, engine.options.guidance_scale, engine.options.sampler) == (20, 6.5, "ddpm")
    assert engine.options.ip_adapter_scale == 0.7  # type: ignore[attr-defined]
    assert (engine.info.id, engine.info.license, engine.loaded) == ("sdxl", "my-licence", False)
    registry = ModelRegistry.from_catalogue(catalogue, placement=engine.placement)
    assert registry.default.info.id == "sdxl"
    assert [m.id for m in registry.models()] == ["kandinsky", "sdxl"]
    assert [m.eager for m in registry.models()] == [True, False]
    assert registry.resolve("k22").info.id == "kandinsky" and registry.resolve("dall-e-2").info.id == "sdxl"
    assert not any(e.loaded for e in registry.engines())  # building a registry loads nothing


def test_weights_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "models" / "mine").mkdir(parents=True)
    path = write(tmp_path, '[[models]]\nname = "m"\nengine = "stable-unclip"\nweights = "models/mine"\n')
    assert read_catalogue(path).models[0].weights == str(tmp_path / "models" / "mine")


def test_without_a_file_the_catalogue_is_the_one_model(tmp_path: Path) -> None:
    assert catalogue_for(None, "kandinsky-2.2") == Catalogue(
        (CatalogueEntry(name="kandinsky-2.2", engine="kandinsky-2.2", weights=None),), default="kandinsky-2.2"
    )
    assert catalogue_for(None, "kandinsky-2.2").aliases() == {"dall-e-2": "kandinsky-2.2"}
    assert catalogue_for(None, "stable-unclip-small").models[0].weights == (
        "stabilityai/stable-diffusion-2-1-unclip-small"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models = [", "not valid TOML"),
        ("", "declare at least one model"),
        ('colour = "red"\n[[models]]\nname = "a"\nengine = "kandinsky-2.2"', "unknown key 'colour'"),
        ('[[models]]\nname = "a"\nengine = "dalle-3"', "model 'a': unknown engine 'dalle-3'"),
        ('[[models]]\nengine = "kandinsky-2.2"', "'name' must be a model id"),
        ('[[models]]\nname = "a b"\nengine = "kandinsky-2.2"', "'name' must be a model id"),
        (
            '[[models]]\nname = "a"\nengine = "kandinsky-2.2"\nweights = "./nowhere"',
            "weights path './nowhere' does not",
        ),
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\nweights = "/no/such/dir"', "does not exist"),
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\nweights = 3', "'weights' must be"),
        (
            '[[models]]\nname = "a"\nengine = "kandinsky-2.2"\n[[models]]\nname = "a"\nengine = "stable-unclip"',
            "the name 'a' is used twice",
        ),
        (
            '[[models]]\nname = "a"\nengine = "kandinsky-2.2"\n'
            '[[models]]\nname = "b"\nengine = "stable-unclip"\naliases = ["a"]',
            "the name 'a' is used twice",
        ),
        ('default = "zzz"\n[[models]]\nname = "a"\nengine = "kandinsky-2.2"', "default = 'zzz' names no model"),
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\nload = "later"', "'load' must be"),
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\nweight = "x/y"', "unknown key 'weight'"),
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\n[models.defaults]\nseed = 1', "unknown default 'seed'"),
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\n[models.defaults]\nsteps = 0', "steps must be at least 1"),
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\n[models.options]\nnoise_level = 5', "unknown option"),
        ('[[models]]\nname = "a"\nengine = "stable-unclip"\n[models.options]\nnoise_level = 5000', "noise_level"),
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\n[models.options]\nsampler = "euler"', "unknown sampler"),
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\naliases = "b"', "'aliases' must be a list"),
        # Upstream providers and routes.
        ('[[models]]\nname = "a"\nengine = "azure-openai"', "azure-openai needs options.deployment"),
        ('[[models]]\nname = "a"\nengine = "openai-compatible"\nweights = "x/y"', "a hosted provider has no weights"),
        (
            '[[models]]\nname = "a"\nengine = "openai-compatible"\n[models.options]\nbase_url = "ftp://x"',
            "base_url must be an http(s) URL",
        ),
        (
            '[[models]]\nname = "a"\nengine = "openai-compatible"\n[models.options]\napi_key = "sk-123"',
            "unknown option 'api_key'",
        ),
        ('[[models]]\nname = "r"\nroute = ["nowhere"]', "its route names 'nowhere', which is not a model"),
        ('[[models]]\nname = "r"\nroute = []', "'route' must be a list of model names"),
        (
            '[[models]]\nname = "a"\nengine = "kandinsky-2.2"\n[[models]]\nname = "r"\nroute = ["a"]\n'
            '[[models]]\nname = "rr"\nroute = ["r"]',
            "its route names 'r', which is a route",
        ),
        ('[[models]]\nname = "r"\nroute = ["r"]\nengine = "kandinsky-2.2"', "a route takes name, route"),
        # Ray Serve's options (vary serve --ray).
        ('[[models]]\nname = "a"\nengine = "kandinsky-2.2"\nray = 2', "[models.ray] must be a table"),
        ('[[models]]\nname = "a"\nengine = "openai-compatible"\n[models.ray]\nnum_replicas = 2', "for local models"),
        ('ray = 1\n[[models]]\nname = "a"\nengine = "kandinsky-2.2"', "[ray] must be a table"),
        ('[ray.proxy]\nx = 1\n[[models]]\nname = "a"\nengine = "kandinsky-2.2"', "unknown key 'proxy' in [ray]"),
        ('[ray]\nedge = 1\n[[models]]\nname = "a"\nengine = "kandinsky-2.2"', "[ray.edge] must be a table"),
        # Licences to accept before weights load.
        (
            '[[models]]\nname = "f"\nengine = "flux-redux"',
            "model 'f': its weights are under the FLUX.1 [dev] Non-Commercial License "
            "(https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md); to accept it, add "
            'accept_license = "flux-1-dev-non-commercial" to this model',
        ),
        (
            '[[models]]\nname = "f"\nengine = "flux-redux"\naccept_license = "flux-1-dev-noncommercial"',
            "accept_license names 'flux-1-dev-noncommercial'; the licences to accept: flux-1-dev-non-commercial",
        ),
        ('[[models]]\nname = "f"\nengine = "flux-redux"\naccept_license = 1', "'accept_license' must be a licence id"),
        (
            '[[models]]\nname = "a"\nengine = "openai-compatible"\naccept_license = "flux-1-dev-non-commercial"',
            "a hosted provider loads no weights",
        ),
    ],
)
def test_bad_files_are_refused_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogueError) as error:
        read_catalogue(path)
    assert message in str(error.value)
    assert str(error.value).startswith(str(path))  # every message says which file


def test_a_licence_is_accepted_per_model_and_reaches_the_engine(tmp_path: Path) -> None:
    text = (
        '[[models]]\nname = "f"\nengine = "flux-redux"\naccept_license = "flux-1-dev-non-commercial"\n'
        '[models.options]\nbase = "dev"\n'
        '[[models]]\nname = "t"\nengine = "flux-redux"\nweights = "tiny-random"\n'  # random weights: nothing to accept
        '[[models]]\nname = "k"\nengine = "kandinsky-2.2"\naccept_license = ["flux-1-dev-non-commercial"]\n'
    )
    flux, twin, kandinsky = read_catalogue(write(tmp_path, text)).models
    assert flux.accepted_licenses == ("flux-1-dev-non-commercial",) and twin.accepted_licenses == ()
    assert kandinsky.accepted_licenses == ("flux-1-dev-non-commercial",)  # accepting more than needed is harmless
    engine = flux.build(placement=Placement(device="cpu"))
    assert engine.info.license.startswith("flux-1-dev-non-commercial") and not engine.loaded


def test_ray_tables_are_kept_as_they_are(tmp_path: Path) -> None:
    text = GOOD + "[models.ray]\nnum_replicas = 2\nray_actor_options = { num_gpus = 1 }\n[ray.edge]\nnum_replicas = 3\n"
    catalogue = read_catalogue(write(tmp_path, text))
    kandinsky, sdxl = catalogue.models
    assert kandinsky.ray == {} and sdxl.ray == {"num_replicas": 2, "ray_actor_options": {"num_gpus": 1}}
    assert catalogue.ray_edge == {"num_replicas": 3}


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot read the file"):
        read_catalogue(tmp_path / "missing.toml")


def test_the_example_in_the_repository_parses() -> None:
    example = Path(__file__).parents[2] / "examples" / "vary.toml"
    catalogue = read_catalogue(example)
    assert [m.engine for m in catalogue.models] == [
        "kandinsky-2.2",
        "sdxl-ip-adapter",
        "stable-unclip",
        "sd-image-variations",
    ]
    assert catalogue.default == "kandinsky-2.2" and catalogue.aliases()["dall-e-2"] == "kandinsky-2.2"
    assert [m.eager for m in catalogue.models] == [True, False, False, False]


SAFETY = """
[[models]]
name = "local"
engine = "kandinsky-2.2"
weights = "tiny-random"
[models.safety]
check = "both"
threshold = 0.5

[[models]]
name = "plain"
engine = "kandinsky-2.2"
weights = "tiny-random"

[[models]]
name = "same"
route = ["local"]

[[models]]
name = "own"
route = ["local", "plain"]
[models.safety]
check = "input"
classifier = "https://guard.example/check"
fail = "open"
"""


def test_safety_tables_override_the_servers_default_and_routes_carry_their_own(tmp_path: Path) -> None:
    catalogue = read_catalogue(write(tmp_path, SAFETY))
    default = SafetyPolicy(check="output", threshold=0.9, max_regenerations=1)
    registry = ModelRegistry.from_catalogue(catalogue, placement=Placement(device="cpu"), safety=default)
    policies = {model.id: model.safety for model in registry.models()}
    assert (policies["local"].check, policies["local"].threshold, policies["local"].max_regenerations) == (
        "both",
        0.5,
        1,
    )
    assert policies["plain"] == default  # no table: the server's default
    assert policies["same"] == policies["local"]  # a route without a table: its models' one table
    assert (policies["own"].check, policies["own"].classifier, policies["own"].fail) == (
        "input",
        "https://guard.example/check",
        "open",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SAFETY.replace("threshold = 0.5", "threshold = 2"), "threshold must be a number from 0 to 1"),
        (SAFETY.replace('check = "both"', 'check = "always"'), "check must be one of"),
        (SAFETY.replace("threshold = 0.5", 'colour = "red"'), "unknown key 'colour'"),
        (SAFETY.replace('fail = "open"', 'fail = "ajar"'), 'fail must be "open" or "closed"'),
        (SAFETY.replace('classifier = "https://guard.example/check"', 'classifier = "nudenet"'), "classifier must be"),
        (
            SAFETY.split('[[models]]\nname = "own"')[0] + '[[models]]\nname = "own"\nroute = ["local", "plain"]\n',
            "different [models.safety] tables",
        ),
    ],
    ids=["threshold", "check", "unknown-key", "fail", "classifier", "route-without-its-own"],
)
def test_bad_safety_tables_are_refused_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CatalogueError, match=re.escape(message)):
        read_catalogue(write(tmp_path, text))
