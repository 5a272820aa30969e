"""The one exception type users see: a single line naming the problem and a fix."""
from __future__ import annotations

from typing import Any


class FewshotError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


def whole_number(value: Any, low: int, flag: str) -> int:
    """`value` where it is a whole number >= `low`; else the one line that says so, naming
    `flag` (the CLI's spelling: the library checks the CLI's numbers in the CLI's words)."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or value < low:
        raise FewshotError(f"{flag} must be {'' if whole else 'a whole number '}at least {low}, got {value!r}")
    return value
