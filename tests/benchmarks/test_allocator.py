"""benchmarks/allocator.py: both malloc settings measured in their own processes, on a tiny net."""

from __future__ import annotations

import platform

from benchmarks import allocator


def test_both_settings_are_timed_in_fresh_processes_and_tabled() -> None:
    result = allocator.main(
        ["--widths", "8", "16", "16", "--batch-size", "16", "--steps", "1", "--rounds", "1"]
    )
    system, kept = result["rows"]
    assert (system["setting"], kept["setting"]) == allocator.SETTINGS
    assert system["applied"] is False  # the child of "system" leaves malloc alone
    assert kept["applied"] is (platform.libc_ver()[0] == "glibc")
    assert result["widths"] == [8, 16, 16]
    assert all(row["seconds_per_step"] > 0 and row["peak_mib"] > 0 for row in result["rows"])
    table = "\n".join(result["table"])
    assert "| system | no |" in table and "| keep freed |" in table
