"""A model's options are checked once, for engines and providers alike: names, JSON types, then bounds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vary.engines.diffusion import EngineOptions
from vary.options import Options
from vary.targets.hosted.provider import HostedOptions


@dataclass(frozen=True)
class Knobs(Options):
    steps: int = 4
    scale: float = 1.5
    hosts: tuple[str, ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, not {self.steps}")


def test_values_fill_in_the_defaults_and_lists_become_tuples() -> None:
    assert Knobs.of({"steps": 2, "hosts": ["a", "b"]}) == Knobs(steps=2, hosts=("a", "b"))
    assert Knobs.of({"scale": 3}) == Knobs(scale=3.0)  # a whole number is a number


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"stepz": 2}, "unknown option 'stepz'; known: hosts, label, scale, steps"),
        ({"steps": "2"}, "option 'steps': input should be a valid integer"),
        ({"steps": True}, "option 'steps': input should be a valid integer"),
        ({"steps": 2.5}, "option 'steps': input should be a valid integer"),
        ({"scale": "1.5"}, "option 'scale': input should be a valid number"),
        ({"hosts": "a.example"}, "option 'hosts': input should be a valid array"),
        ({"steps": 0}, "steps must be at least 1, not 0"),
        ({"label": object()}, "options must be numbers, strings, booleans or lists of them"),
    ],
)
def test_a_bad_option_is_refused_in_one_line_that_names_it(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        Knobs.of(values)
    assert str(refused.value) == message


def test_merged_checks_as_of_does_and_none_leaves_a_field() -> None:
    base = Knobs.of({"steps": 3})
    assert base.merged(steps=None, scale=2.0) == Knobs(steps=3, scale=2.0)
    assert base.merged() is base
    with pytest.raises(ValueError, match="unknown option 'nope'"):
        base.merged(nope=1)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        base.merged(steps=0)


def test_engines_and_providers_share_the_one_check() -> None:
    with pytest.raises(ValueError, match="unknown option 'noise_level'"):
        EngineOptions.of({"noise_level": 5})
    with pytest.raises(ValueError, match="option 'rehost_urls': input should be a valid boolean"):
        HostedOptions.of({"rehost_urls": 1})
    with pytest.raises(ValueError, match="download_hosts must be a list of host names"):
        HostedOptions.of({"download_hosts": ["https://cdn.example.com"]})
