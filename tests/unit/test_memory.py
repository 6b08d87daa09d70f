"""The glibc calls behind memory release: present here (Debian, glibc), refused where they must be."""

from __future__ import annotations

import platform

import pytest

from vary.ops import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim and mallopt are glibc's")
def test_trim_and_arena_cap_are_available_on_glibc() -> None:
    assert memory._malloc_trim is not None and memory._mallopt is not None
    memory.release_free_memory()  # returns whether pages went back; either answer is fine


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.cap_malloc_arenas(2) is False


def test_zero_keeps_glibcs_default() -> None:
    assert memory.cap_malloc_arenas(0) is False
