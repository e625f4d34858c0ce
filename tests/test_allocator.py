"""featvis.allocator: freed host memory is reused without page faults, and only when asked."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
from helpers import FAULTS_SCRIPT

from featvis import allocator

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)


def _faults(setting: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT, setting], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_is_reused_without_faulting_its_pages_in_again() -> None:
    system, kept = _faults("system"), _faults("keep")
    assert system > 8_000  # a fresh mapping each time (as long as the kernel has no 2 MiB pages for it)
    assert kept < 0.05 * system


def test_the_command_line_setting_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.ENV, "0")
    assert allocator.keep_freed_memory_unless_disabled() is False


def test_nothing_is_applied_where_the_c_library_is_not_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.keep_freed_memory() is False
