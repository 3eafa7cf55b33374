"""Whole numbers read from text a client or a config wrote: ASCII digits only, bounded before
`int()` sees them.

`str.isdigit()` is true of "²" and of U+0665 (Unicode digits), which `int()` then refuses ("²")
or reads (U+0665, Arabic-Indic five, as 5), and of 5,000 digits, which `int()` refuses past
Python's 4,300-digit limit: each of those had been a ValueError nobody caught (a server that did
not start, INTERNAL for a client's config) or a number the text did not say.
"""

from __future__ import annotations


def whole_number(text: str, limit: int) -> int | None:
    """`text` (spaces around it allowed) as a whole number from 0 to `limit`; None for anything
    else: a sign, a non-ASCII digit, an empty text, more digits than `limit` has."""
    stripped = text.strip()
    if not stripped or not stripped.isascii() or not stripped.isdigit():
        return None
    digits = stripped.lstrip("0") or "0"
    if len(digits) > len(str(limit)):
        return None
    value = int(digits)
    return value if value <= limit else None
