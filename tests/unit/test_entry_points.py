"""What users and tools call keeps working: the console script, `python -m vary`, the Ray builder's old path,
the catalogue's old names, and every setting as an environment variable and a `vary serve` flag."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from vary.cli.flags import add_settings_flags, flags_of, given_settings
from vary.settings import SECTIONS, Settings


def test_the_console_script_and_the_module_both_run() -> None:
    script = shutil.which("vary", path=str(Path(sys.executable).parent))
    assert script is not None, "the `vary` console script is installed beside the interpreter"
    for command in ([script, "--help"], [sys.executable, "-m", "vary", "--help"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "serve" in done.stdout, done.stderr


def test_every_setting_but_a_secret_is_a_serve_flag_with_its_type_default_and_variable() -> None:
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    actions = {action.dest: action for action in parser._actions}
    for name, field in Settings.model_fields.items():
        if field.annotation == SecretStr | None:
            assert name not in actions, f"{name} must never be a flag: a process list shows flags"
            continue
        action = actions[name]
        assert action.option_strings == flags_of(name)
        if flags_of(name) != ["--" + name.replace("_", "-")]:  # a variable not named after its flag is said
            assert f"VARY_{name.upper()}" in (action.help or "")
        if field.default not in (None, False) and not callable(field.default_factory):
            default = field.default
            assert (", ".join(default) if isinstance(default, tuple) else str(default)) in (action.help or ""), name
    given = parser.parse_args(["--port", "9001", "--no-auth", "--log-format", "text", "--max-image-side", "512"])
    settings = Settings(**given_settings(given))
    assert (settings.port, settings.no_auth, settings.log_format, settings.max_image_side) == (9001, True, "text", 512)
    with pytest.raises(SystemExit):
        parser.parse_args(["--log-format", "xml"])  # a Literal's choices come from the annotation


def test_the_catalogue_s_old_names_still_work_and_say_they_are_deprecated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalogue = tmp_path / "vary.toml"
    assert Settings(config=catalogue).catalogue == catalogue
    monkeypatch.setenv("VARY_CONFIG", str(catalogue))
    settings = Settings()
    assert settings.catalogue == catalogue and settings.deprecations()
    monkeypatch.setenv("VARY_CATALOGUE", str(tmp_path / "new.toml"))
    assert Settings().catalogue == tmp_path / "new.toml"
    monkeypatch.delenv("VARY_CONFIG")
    assert Settings().deprecations() == []


def test_serve_help_groups_the_flags_by_section_one_line_each() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vary", "serve", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    titles = [line[:-1] for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == ["options", *SECTIONS]
    flag_lines = [line for line in lines if line.startswith("  --")]
    # One line per setting, its help on the same line (never wrapped, never below a long flag).
    assert len(flag_lines) == sum(1 for field in Settings.model_fields.values() if field.annotation != SecretStr | None)
    assert all(len(line.split("  ", 2)) == 3 or "   " in line.strip() for line in flag_lines)
    assert not [line for line in lines if line.startswith(" " * 10)]  # no continuation lines
    assert "VARY_MAX_IMAGE_BYTES" in done.stdout  # the rule for every flag's variable, said once
