"""Byte sizes: the one place where human sizes are parsed and printed.

Binary units (KiB, MiB, GiB, TiB; also K, M, G, T) are powers of 2**10; decimal units (KB, MB,
GB, TB) are powers of 10**3. Bytes are always ``int``.
"""
from __future__ import annotations

import math
import re

from .errors import LoraPlannerError

_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")

SIZE_HELP = "a size such as 16GiB, 16G (= GiB, 2**30 bytes), 16000MiB or 15.5GB (= 10**9 bytes)"


def parse_size(text: str | int, field: str = "size") -> int:
    """Parse '16GiB', '16G', '16000MiB', '15.5GB' or a plain byte count into bytes.

    Raises:
        LoraPlannerError: if the text is not a positive finite size.
    """
    if isinstance(text, bool):
        raise LoraPlannerError(field, SIZE_HELP, text)
    if isinstance(text, int):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise LoraPlannerError(field, SIZE_HELP, text, "Use a number followed by B, KiB, MiB, GiB, TiB, KB, MB, GB or TB.")
        value, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(value) or value <= 0:
        raise LoraPlannerError(field, "a positive size", text, "Give a size above zero, e.g. 16GiB.")
    return int(round(value * _UNITS[unit]))


def format_size(n_bytes: float) -> str:
    """Human binary size with 2 decimals: 16.00 GiB, 85.3 MiB."""
    sign = "-" if n_bytes < 0 else ""
    n = abs(float(n_bytes))
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{sign}{n / factor:.2f} {unit}"
    return f"{sign}{int(n)} B"
