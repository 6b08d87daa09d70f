"""Ray is an optional extra: plain `vary serve` never imports it, and `--ray` without it says what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NO_RAY = """
import sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, NoRay())
"""


def test_the_one_box_server_does_not_import_ray() -> None:
    code = (
        "import sys\n"
        "import vary.cli.commands, vary.cli.serve, vary.app, vary.service.registry, vary.service.gateway\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_ray_without_ray_installed_is_one_line(tmp_path: Path) -> None:
    args = ["serve", "--ray", "127.0.0.1:1", "--model", "tiny-random", "--no-auth", "--data-dir", str(tmp_path)]
    code = NO_RAY + f"from vary.cli import main\nmain({args!r})\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert (
        done.stderr.strip().splitlines()[-1]
        == 'vary: --ray needs Ray Serve, which is not installed: pip install "vary[cluster]"'
    )
