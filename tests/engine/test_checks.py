"""featvis.engine.checks: one wording for every argument check."""

from __future__ import annotations

import math

import pytest

from featvis.engine.checks import check_bool, check_choice, check_int, check_number


def test_values_that_pass_come_back() -> None:
    assert check_int("n", 3, 1) == 3 and check_int("seed", -5) == -5
    assert check_number("lr", 1, 0.0, exclusive_minimum=True) == 1.0
    assert check_bool("flag", False) is False
    assert check_choice("mode", "b", ("a", "b")) == "b"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_int("steps", -1, 0), "steps must be an integer >= 0, got -1."),
        (lambda: check_int("steps", True, 0), "steps must be an integer >= 0, got True."),
        (lambda: check_int("seed", 1.0), "seed must be an integer, got 1.0."),
        (
            lambda: check_number("lr", 0.0, 0.0, exclusive_minimum=True),
            "lr must be a finite number > 0, got 0.0.",
        ),
        (lambda: check_number("p", 1.5, 0.0, 1.0), r"p must be a finite number in \[0, 1\], got 1.5."),
        (lambda: check_number("w", math.nan, 0.0), "w must be a finite number, got nan."),
        (lambda: check_number("w", "1", 0.0), "w must be a finite number, got '1'."),
        (lambda: check_bool("save_png", "yes"), "save_png must be True or False, got 'yes'."),
        (lambda: check_choice("mode", "c", ("a", "b")), "mode must be one of 'a', 'b', got 'c'."),
    ],
)
def test_failures_name_the_argument_the_range_and_the_value(call, message) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        call()
