"""Argument validators shared by every featvis module: one wording for every "must be an integer >= 1".

Each check returns the value (converted where that is lossless) so callers can validate and assign in one line,
and raises ``ValueError`` with a message that names the argument, the allowed range and the value received.
"""

from __future__ import annotations

import math
from typing import Any


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """An integer (not a bool), at least ``minimum`` when one is given.

    Args:
        name: the argument's name, as the user spells it.
        value: the value received.
        minimum: smallest allowed value; None allows any integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}.")
    return value


def check_number(
    name: str,
    value: Any,
    minimum: float = -math.inf,
    maximum: float = math.inf,
    *,
    exclusive_minimum: bool = False,
) -> float:
    """A finite int or float (not a bool) in ``[minimum, maximum]`` (``(minimum, maximum]`` if exclusive).

    Args:
        name: the argument's name, as the user spells it.
        value: the value received.
        minimum: lower bound.
        maximum: upper bound.
        exclusive_minimum: the lower bound itself is not allowed (e.g. a learning rate > 0).
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    above = value > minimum if exclusive_minimum else value >= minimum
    if not (above and value <= maximum):
        low = ">" if exclusive_minimum else ">="
        if maximum == math.inf:
            bound = f"{low} {minimum:g}"
        else:
            bound = f"in {'(' if exclusive_minimum else '['}{minimum:g}, {maximum:g}]"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """True or False, nothing that merely converts to one (a YAML ``"no"`` string is a mistake, not False)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return value


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """One of ``choices``; the message lists them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}.")
    return value
