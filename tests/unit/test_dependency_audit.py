"""An offline dependency audit against the pinned advisories in tests/data/advisories.toml: no installed
package is a version an advisory names, and pyproject.toml's floors exclude them where it must."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
ADVISORIES: list[dict[str, Any]] = tomllib.loads((ROOT / "tests/data/advisories.toml").read_text())["advisory"]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements() -> dict[str, list[Requirement]]:
    found: dict[str, list[Requirement]] = {}
    for line in PROJECT["dependencies"]:
        requirement = Requirement(line)
        found.setdefault(requirement.name.lower(), []).append(requirement)
    return found


def lowest_allowed(requirement: Requirement) -> Version | None:
    """The floor the requirement sets (>=, ==, ~=, >), or None when it sets none."""
    floors = [Version(spec.version) for spec in requirement.specifier if spec.operator in (">=", "==", "~=", ">")]
    return max(floors) if floors else None


@pytest.mark.parametrize("advisory", ADVISORIES, ids=[a["id"] for a in ADVISORIES])
def test_no_installed_package_is_affected(advisory: dict[str, Any]) -> None:
    try:
        installed = Version(importlib.metadata.version(advisory["package"]))
    except importlib.metadata.PackageNotFoundError:
        return  # not installed here, so nothing to be affected
    assert installed >= Version(advisory["fixed"]), (
        f"{advisory['package']} {installed} is affected by {advisory['id']} ({advisory['summary']}): "
        f"install {advisory['fixed']} or later"
    )


@pytest.mark.parametrize(
    "advisory", [a for a in ADVISORIES if a["floor"]], ids=[a["id"] for a in ADVISORIES if a["floor"]]
)
def test_pyproject_floors_exclude_the_affected_versions(advisory: dict[str, Any]) -> None:
    declared = requirements().get(advisory["package"].lower(), [])
    assert declared, f"pyproject.toml must require {advisory['package']}>={advisory['fixed']} ({advisory['id']})"
    floors = [lowest_allowed(requirement) for requirement in declared]
    assert all(floor is not None and floor >= Version(advisory["fixed"]) for floor in floors), (
        f"pyproject.toml admits {advisory['package']} below {advisory['fixed']}, affected by {advisory['id']}"
    )
