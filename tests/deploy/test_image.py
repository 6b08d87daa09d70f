"""The CPU image, built and run for real (opt-in: VARY_CONTAINER_TESTS=1, since it takes minutes).

buildah builds ./Dockerfile from a local base (no registry needed: deploy/podman/make-base.sh makes one
from Debian's packages), podman runs it on the host's network, and the test checks from outside: the
health check, a variation with the tiny model through the openai SDK, the URL it returns, the user it
runs as, and a SIGTERM that drains it (/readyz 503 at once, requests still answered, then a clean exit,
status 143: 128 + SIGTERM). It prints the image's size and its largest layers, and builds the image again
from a changed source, which must reuse the dependencies' layers. docs/deploy.md has the commands and
how long they took.

Settings, from the environment:
  VARY_CONTAINER_BASE            the base image (default localhost/debian-python:bookworm)
  VARY_CONTAINER_TORCH_INDEX_URL the TORCH_INDEX_URL build argument (unset: the Dockerfile's, PyTorch's CPU
                                 index; set and empty: torch with its CUDA wheels from PyPI, the GPU image,
                                 where only PyPI can be reached)
  VARY_CONTAINER_IMAGE           the tag to build (default localhost/vary:cpu-test)
  PIP_CERT                       a CA bundle for pip inside the build (a TLS-intercepting proxy): mounted
                                 for the build's RUN steps only, never committed into the image
  VARY_CONTAINER_PIP_FIND_LINKS  a directory of wheels pip may take from (a local mirror), mounted likewise
  CONTAINERS_CONF                podman's own; deploy/podman/containers.conf for hosts like vary's CI
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from tests.conftest import png_bytes
from tests.deploy.tools import ROOT, tool
from vary.testing import free_port

pytestmark = pytest.mark.skipif(
    os.environ.get("VARY_CONTAINER_TESTS") != "1", reason="builds and runs the image: VARY_CONTAINER_TESTS=1"
)

BASE = os.environ.get("VARY_CONTAINER_BASE", "localhost/debian-python:bookworm")
IMAGE = os.environ.get("VARY_CONTAINER_IMAGE", "localhost/vary:cpu-test")
BUILD_TIMEOUT = 3600.0  # a cold build downloads torch
START_TIMEOUT = 300.0


def run(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    buildah = tool("buildah", "buildah (apt)")
    podman = tool("podman", "podman (apt)")
    if run(podman, "image", "exists", BASE, check=False).returncode != 0:
        pytest.fail(f"no base image {BASE}: make one with `sh deploy/podman/make-base.sh {BASE}`")
    args = [buildah, "build", "--format", "docker", "--isolation", "chroot", "--layers"]
    args += ["--build-arg", f"BASE_IMAGE={BASE}"]
    if "VARY_CONTAINER_TORCH_INDEX_URL" in os.environ:  # empty is a value: the GPU image
        args += ["--build-arg", f"TORCH_INDEX_URL={os.environ['VARY_CONTAINER_TORCH_INDEX_URL']}"]
    if cert := os.environ.get("PIP_CERT"):
        args += ["-v", f"{cert}:{cert}:ro", "--build-arg", f"PIP_CERT={cert}"]
    if wheels := os.environ.get("VARY_CONTAINER_PIP_FIND_LINKS"):
        args += ["-v", f"{wheels}:{wheels}:ro", "--build-arg", f"PIP_FIND_LINKS={wheels}"]
    started = time.monotonic()
    run(*args, "-t", IMAGE, "-f", str(ROOT / "Dockerfile"), str(ROOT), timeout=BUILD_TIMEOUT)
    print(f"built {IMAGE} in {time.monotonic() - started:.0f} s")
    size = int(run(podman, "image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    print(f"{IMAGE}: {size / 1e9:.2f} GB")
    layers = run(podman, "history", "--format", "{{.Size}}\t{{.CreatedBy}}", IMAGE).stdout.splitlines()
    for line in layers[:8]:
        print(f"  {line[:150]}")
    return IMAGE


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[tuple[str, str]]:
    """The image running on the host's network on a free port; removed (with its volumes) by its name."""
    podman = tool("podman", "podman (apt)")
    name = f"vary-test-{secrets.token_hex(4)}"
    port = free_port()
    started = time.monotonic()
    run(
        *(podman, "run", "-d", "--name", name, "--network", "host"),
        *("-e", f"VARY_PORT={port}", "-e", "VARY_MODEL=tiny-random", "-e", "HF_HUB_OFFLINE=1"),
        image,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            state = run(podman, "inspect", name, "--format", "{{.State.Status}}").stdout.strip()
            assert state == "running", f"the container is {state}:\n{run(podman, 'logs', name, check=False).stderr}"
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, run(podman, "logs", name, check=False).stderr[-4000:]
            time.sleep(1)  # readiness poll, bounded by the deadline
        print(f"{name} answered /healthz {time.monotonic() - started:.0f} s after `podman run`")
        yield name, base_url
    finally:
        run(podman, "rm", "-f", "-v", "-t", "5", name, check=False)


def test_the_image_serves_a_variation_and_its_url_and_stops_on_sigterm(container: tuple[str, str]) -> None:
    podman = tool("podman", "podman (apt)")
    name, base_url = container
    # The image's own HEALTHCHECK passes, and vary runs as the image's unprivileged user.
    assert run(podman, "healthcheck", "run", name, check=False).returncode == 0
    assert run(podman, "exec", name, "id", "-u").stdout.strip() == "10001"
    # The first key, made at the first start, waits in the data dir volume.
    key = run(podman, "exec", name, "cat", "/data/first-api-key").stdout.strip()
    assert key.startswith("vary-")

    client = OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=120)
    result = client.images.create_variation(image=png_bytes(64), n=2, size="256x256")
    assert len(result.data) == 2
    url = result.data[0].url
    assert url and url.startswith(f"{base_url}/v1/files/")
    fetched = httpx.get(url, timeout=30)
    assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (256, 256)

    # SIGTERM, as `docker stop` and Kubernetes send it: the image's drain (VARY_DRAIN_SECONDS=10) fails /readyz
    # at once and still answers requests, then uvicorn shuts down and vary exits, well before a SIGKILL.
    run(podman, "kill", "--signal", "TERM", name)
    signalled = time.monotonic()
    ready = httpx.get(f"{base_url}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    during = client.images.create_variation(image=png_bytes(64), n=1, size="256x256", response_format="b64_json")
    assert len(during.data) == 1 and time.monotonic() - signalled < 10
    exit_code = run(podman, "wait", name, timeout=90).stdout.strip()
    print(f"exited {time.monotonic() - signalled:.1f} s after SIGTERM")
    logs = (lambda r: r.stdout + r.stderr)(run(podman, "logs", name))
    # uvicorn drains, then ends by the signal it was sent (as outside a container): tini reports 128 + 15.
    # Never 137, a SIGKILL after the grace period.
    assert exit_code in ("0", "143"), logs[-4000:]
    assert "Application shutdown complete" in logs and "Finished server process" in logs


def test_a_source_edit_reuses_the_dependency_layers(image: str, tmp_path: Path) -> None:
    """The lock's layers come before the source: an image built from an edited source shares them all, and
    only vary's own layers differ."""
    buildah = tool("buildah", "buildah (apt)")
    podman = tool("podman", "podman (apt)")
    context = tmp_path / "context"
    shutil.copytree(ROOT, context, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*_cache"))
    init = context / "src" / "vary" / "__init__.py"
    init.write_text(init.read_text() + "# an edit\n")
    args = [buildah, "build", "--format", "docker", "--isolation", "chroot", "--layers"]
    args += ["--build-arg", f"BASE_IMAGE={BASE}"]
    if "VARY_CONTAINER_TORCH_INDEX_URL" in os.environ:
        args += ["--build-arg", f"TORCH_INDEX_URL={os.environ['VARY_CONTAINER_TORCH_INDEX_URL']}"]
    if cert := os.environ.get("PIP_CERT"):
        args += ["-v", f"{cert}:{cert}:ro", "--build-arg", f"PIP_CERT={cert}"]
    if wheels := os.environ.get("VARY_CONTAINER_PIP_FIND_LINKS"):
        args += ["-v", f"{wheels}:{wheels}:ro", "--build-arg", f"PIP_FIND_LINKS={wheels}"]
    edited = f"{IMAGE}-edited"
    started = time.monotonic()
    run(*args, "-t", edited, "-f", str(context / "Dockerfile"), str(context), timeout=BUILD_TIMEOUT)
    print(f"rebuilt after a source edit in {time.monotonic() - started:.0f} s")
    try:

        def layers(tag: str) -> list[str]:
            listed: list[str] = json.loads(
                run(podman, "image", "inspect", tag, "--format", "{{json .RootFS.Layers}}").stdout
            )
            return listed

        before, after = layers(image), layers(edited)
        shared = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), len(after))
        sizes = run(podman, "history", "--format", "{{.Size}}", edited).stdout.split()
        print(f"{shared} of {len(after)} layers shared; the edited image's newest layers: {sizes[:3]}")
        # Everything up to the dependencies' venv is shared: only vary's wheel and its install differ.
        assert shared == len(after) - 2 and len(after) == len(before)
        # And the edit is in the image (a layer cache that missed it would have kept the old vary).
        marker = run(
            podman,
            "run",
            "--rm",
            "--network",
            "host",
            "--entrypoint",
            "sh",
            edited,
            "-c",
            "tail -n 1 $(python3 -c 'import vary; print(vary.__file__)')",
        ).stdout
        assert "# an edit" in marker
    finally:
        run(podman, "rmi", edited, check=False)
