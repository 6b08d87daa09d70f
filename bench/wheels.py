"""`python -m bench.wheels`: the wheels vary needs on a GPU machine that its image lacks, in .gpu-wheels/.

The list is never written by hand: it is vary's own requirements (pyproject.toml's dependencies, and the
extras asked for), followed through each wheel's Requires-Dist for the GPU machine's Python (CPython 3.12,
manylinux x86_64), stopping at every package the image already has (bench/gpu_image.txt). Each package is
pinned to the version installed where this runs (the version vary's tests ran with), else the newest that
satisfies every requirement on it. An image package whose recorded version cannot satisfy a requirement is
carried too. The folder then holds exactly that list, one version of each (two would stop the install).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
IMAGE_FILE = Path(__file__).parent / "gpu_image.txt"
WHEELS = ROOT / ".gpu-wheels"
# What one call of the device tool carries at most: the wheels must leave room for the working tree.
CARRY_LIMIT_BYTES = 64 * 2**20
WHEELS_BUDGET_BYTES = 48 * 2**20
# For a rehearsal elsewhere: the image's own versions of the packages vary leans on that differ most from a
# developer's (the GPU's torch cannot be had for another Python; these can, as they are).
STAND_INS = ("transformers", "huggingface-hub", "accelerate", "tokenizers")
# The GPU machine's interpreter, as pip's markers see it.
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
}
# pip matches manylinux tags exactly: name every glibc the image's (2.39) can load.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
PIP_TARGET = [
    "--only-binary=:all:",
    "--python-version", "3.12",
    "--implementation", "cp",
    "--abi", "cp312", "--abi", "abi3", "--abi", "none",
    *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
]  # fmt: skip


def image_packages(path: Path = IMAGE_FILE) -> dict[str, Version | None]:
    """The image's packages by canonical name, with the version recorded there (None where none was)."""
    packages: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            packages[canonicalize_name(name)] = Version(version) if version else None
    return packages


def project_requirements(extras: Iterable[str] = (), pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """vary's dependencies and those of the named extras, as pyproject.toml lists them."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def applies(requirement: Requirement, extras: Iterable[str] = ()) -> bool:
    """Whether a requirement holds on the GPU machine's Python, for a package installed with `extras`."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**TARGET_ENV, "extra": extra}) for extra in ("", *extras))


def requirements_of(wheel: Path) -> list[Requirement]:
    """A wheel's Requires-Dist, read from its METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    return [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]


@dataclass
class Wanted:
    """What the requirements met so far ask of one package: the union of their version ranges and extras."""

    requirements: list[Requirement] = field(default_factory=list)

    @property
    def extras(self) -> set[str]:
        return {extra for requirement in self.requirements for extra in requirement.extras}

    def satisfied_by(self, version: Version) -> bool:
        return all(requirement.specifier.contains(version, prereleases=True) for requirement in self.requirements)

    def specifier(self) -> str:
        return ",".join(str(r.specifier) for r in self.requirements if str(r.specifier))


def installed_version(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_download(pins: list[str], into: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *PIP_TARGET, "-d", str(into), *pins],
        check=True,
    )


def wheel_of(folder: Path, name: str) -> Path:
    for wheel in folder.glob("*.whl"):
        if canonicalize_name(parse_wheel_filename(wheel.name)[0]) == name:
            return wheel
    raise FileNotFoundError(f"no wheel of {name} in {folder}")


def collect(roots: list[Requirement], image: dict[str, Version | None], folder: Path) -> dict[str, Path]:
    """Every package outside the image that `roots` need on the GPU machine, downloaded into `folder`, followed
    level by level through the wheels' own requirements (one pip call per level)."""
    wanted: dict[str, Wanted] = {}
    carried: dict[str, Path] = {}
    followed: dict[str, set[str]] = {}  # the extras whose requirements were followed, per carried package
    pending = [r for r in roots if applies(r)]
    while pending:
        for requirement in pending:
            wanted.setdefault(canonicalize_name(requirement.name), Wanted()).requirements.append(requirement)
        pins = {}
        for name, want in wanted.items():
            if name in carried and want.satisfied_by(parse_wheel_filename(carried[name].name)[1]):
                continue
            known = image.get(name)
            if name in image and (known is None or want.satisfied_by(known)):
                continue
            here = installed_version(name)
            pins[name] = f"{name}=={here}" if here is not None and want.satisfied_by(here) else name + want.specifier()
        for name in pins:
            if name in carried:  # a later requirement ruled out the version taken earlier
                carried.pop(name).unlink()
                followed.pop(name)
        if pins:
            pip_download(list(pins.values()), folder)
        pending = []
        for name in wanted.keys() & (pins.keys() | carried.keys()):
            carried[name] = wheel_of(folder, name)
            extras = wanted[name].extras
            if name in followed and extras <= followed[name]:
                continue
            followed[name] = extras
            pending += [r for r in requirements_of(carried[name]) if applies(r, extras) and not _self(r, name)]
    return carried


def _self(requirement: Requirement, name: str) -> bool:
    """`pkg[extra]` requiring `pkg` itself: its base requirements are already followed."""
    return canonicalize_name(requirement.name) == name


def download(extras: Iterable[str] = (), into: Path = WHEELS) -> list[Path]:
    """Fills `into` with exactly the wheels needed: downloaded afresh into a temporary folder, then moved, so a
    failed run leaves the previous folder as it was and a stale wheel never stays."""
    roots = project_requirements(extras)
    missing = [str(r) for r in roots if applies(r) and installed_version(r.name) is None]
    if missing:  # the pins would be whatever is newest, not what vary was tested with
        sys.exit(f"run this with the Python vary is installed in (VARY_PYTHON): it lacks {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as tmp:
        carried = collect(roots, image_packages(), Path(tmp))
        into.mkdir(exist_ok=True)
        for old in into.glob("*.whl"):
            old.unlink()
        for wheel in carried.values():
            wheel.rename(into / wheel.name)
    return sorted(into.glob("*.whl"))


def stand_ins(into: Path) -> list[str]:
    """The image's versions of STAND_INS, for this interpreter: a rehearsal elsewhere runs with them."""
    image = image_packages()
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("*.whl"):
        old.unlink()
    pins = [f"{name}=={image[name]}" for name in STAND_INS]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into)]
    subprocess.run([*pip, *pins], check=True)
    return pins


def check(site: Path, extras: Iterable[str] = ()) -> list[str]:
    """What would be missing on the GPU machine with `site` (the wheels, installed) first on the path: one line per
    requirement of vary, or of a carried package, that neither a carried package nor the image satisfies. On the
    GPU machine's Python the image is what this interpreter has; elsewhere (a rehearsal), bench/gpu_image.txt."""
    carried = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in importlib.metadata.distributions(path=[str(site)])
    }
    on_target = sys.version_info[:2] == (3, 12) and platform.machine() == "x86_64"
    image = image_packages()
    problems: list[str] = []
    seen: set[str] = set()
    pending = [(r, "vary") for r in project_requirements(extras) if applies(r)]
    while pending:
        requirement, by = pending.pop()
        name = canonicalize_name(requirement.name)
        version = carried.get(name)
        if version is None:
            version = installed_version(name) if on_target else image.get(name)
            if version is None and (on_target or name not in image):
                problems.append(f"{requirement} (needed by {by}): not carried, not in the image")
            elif version is not None and not requirement.specifier.contains(version, prereleases=True):
                problems.append(f"{requirement} (needed by {by}): the image has {version}")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement} (needed by {by}): carried {version}")
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key not in seen:
            seen.add(key)
            dist = importlib.metadata.distribution(name) if on_target else _dist_in(site, name)
            for line in dist.requires or []:
                sub = Requirement(line)
                if applies(sub, requirement.extras) and canonicalize_name(sub.name) != name:
                    pending.append((sub, name))
    return problems


def _dist_in(site: Path, name: str) -> importlib.metadata.Distribution:
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if canonicalize_name(dist.metadata["Name"]) == name:
            return dist
    raise importlib.metadata.PackageNotFoundError(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wheels", description=__doc__)
    parser.add_argument("--extra", action="append", default=[], help="also a pyproject.toml extra (repeatable)")
    parser.add_argument("--into", type=Path, default=WHEELS)
    parser.add_argument("--check", type=Path, metavar="SITE", help="check the wheels installed in SITE instead")
    parser.add_argument("--pip-target", action="store_true", help="print pip's flags for the GPU machine's Python")
    stand_in_help = "download, for this Python, the image's versions of " + ", ".join(STAND_INS)
    parser.add_argument("--stand-ins", type=Path, metavar="DIR", help=stand_in_help)
    args = parser.parse_args(argv)
    if args.pip_target:
        print(" ".join(PIP_TARGET))
        return
    if args.stand_ins:
        pins = stand_ins(args.stand_ins)
        print(f"the image's {', '.join(pins)} in {args.stand_ins}, for rehearsals on this Python")
        return
    if args.check:
        problems = check(args.check, args.extra)
        for line in problems:
            print(f"missing on the GPU machine: {line}", file=sys.stderr)
        if problems:
            sys.exit(1)
        print(f"every requirement of vary is met by the image and the wheels in {args.check}")
        return
    wheels = download(args.extra, args.into)
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 1e6:8.2f} MB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total / 1e6:.1f} MB ({total / 2**20:.1f} MiB) in {args.into}")
    if total > WHEELS_BUDGET_BYTES:
        sys.exit(f"{total / 2**20:.1f} MiB is over {WHEELS_BUDGET_BYTES / 2**20:.0f} MiB: it would crowd the "
                 f"{CARRY_LIMIT_BYTES / 2**20:.0f} MiB a device call carries")  # fmt: skip


if __name__ == "__main__":
    main()
