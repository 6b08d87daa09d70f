"""The application builder for Ray's own tooling (`vary.cluster.deployments:build`), and `serve run` of its example."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster.ray_cluster import RayCluster
from tests.conftest import png_bytes

pytestmark = pytest.mark.cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ray-serve.yaml"


def test_the_builder_builds_a_serve_application(ray_driver: Any, tmp_path: Path) -> None:
    from ray.serve import Application

    from vary.cluster.deployments import build

    assert isinstance(build({"model": "tiny-random", "data_dir": str(tmp_path)}), Application)


def test_serve_refusing_a_ray_table_is_one_line_naming_it(ray_driver: Any, tmp_path: Path) -> None:
    from vary.cluster.deployments import build
    from vary.service.catalogue import CatalogueError

    config = tmp_path / "catalogue.toml"
    config.write_text(
        '[[models]]\nname = "a"\nengine = "kandinsky-2.2"\nweights = "tiny-random"\n[models.ray]\nnum_replica = 2\n'
    )
    with pytest.raises(CatalogueError) as error:
        build({"config": str(config), "data_dir": str(tmp_path)})
    assert str(error.value).startswith("model 'a': [models.ray]: ") and "num_replica" in str(error.value)
    assert "\n" not in str(error.value)


def test_the_example_config_is_one_serve_accepts_and_imports_the_builder(ray_driver: Any, tmp_path: Path) -> None:
    """Serve's own schema for `serve deploy` files accepts the example, and its import path is the builder,
    which builds from the example's args (the catalogue swapped for the tiny twin: no weights here)."""
    import importlib

    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    (app,) = config.applications
    module, _, name = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), name)
    args = {**app.args, "config": None, "model": "tiny-random", "data_dir": str(tmp_path)}
    assert isinstance(builder(args), Application)


@pytest.mark.skipif(
    not os.environ.get("VARY_SLOW_CLUSTER_TESTS"),
    reason="deploys a second application (about a minute on two cores); VARY_SLOW_CLUSTER_TESTS=1 runs it",
)
def test_serve_run_of_the_example_config_answers(ray_cluster: RayCluster, ray_driver: Any, tmp_path: Path) -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    # The example as it is, but for the tiny twin, a temporary data dir, and this cluster's port.
    config["http_options"] = {"host": "127.0.0.1", "port": ray_cluster.serve_port}
    (app,) = config["applications"]
    app["args"] = {"model": "tiny-random", "data_dir": str(tmp_path / "data"), "no_auth": True}
    path = tmp_path / "ray-serve.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_bin = Path(sys.executable).parent / "serve"
    try:
        done = subprocess.run(
            [str(serve_bin), "run", str(path), "--address", ray_cluster.address, "--non-blocking"],
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        base = f"http://127.0.0.1:{ray_cluster.serve_port}"
        deadline = time.monotonic() + 240  # `--non-blocking` returns before the replicas are up
        while not _healthy(base):
            assert time.monotonic() < deadline, "the application never answered /healthz"
            time.sleep(1)  # poll, bounded by the deadline
        response = httpx.post(
            f"{base}/v1/images/variations",
            files={"image": ("in.png", png_bytes(64), "image/png")},
            data={"size": "256x256", "response_format": "b64_json"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 1
    finally:
        ray_driver.delete("vary")


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    except httpx.TransportError:
        return False
