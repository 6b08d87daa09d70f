"""mypy in strict mode over the whole package, as configured in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_type_checks_strictly() -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is in the test extra")
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("runs from a source checkout")
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "src" / "vary")])
    assert status == 0, stdout + stderr
