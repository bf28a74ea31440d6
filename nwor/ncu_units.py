"""ncu's units: its auto-scaled spellings (``Mbyte``, ``us``, ``Gbyte/second``) converted to base units."""
from __future__ import annotations

import re

# ncu scales units with SI prefixes (Kbyte = 1000 byte): the fixtures' details export says
# "8.41 Mbyte" where the base-unit export says 8,410,624 byte (a binary MiB would read 8.02).
_SI = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_SCALED_BASES = ("byte", "cycle", "inst", "sector", "request", "warp", "thread", "block")
# Older ncu versions spell times "nsecond"/"usecond"/"msecond"; newer ones "ns"/"us"/"ms".
_TIME_NS = {"ns": 1.0, "nsecond": 1.0, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6,
            "s": 1e9, "second": 1e9}
_UNIT_RE = re.compile(r"^(?P<prefix>[KMGTP]?)(?P<base>" + "|".join(_SCALED_BASES) + r")(?P<rate>/s(econd)?)?$")


def to_base_unit(value: float, unit: str) -> tuple[float, str]:
    """Convert a value in ncu's auto-scaled unit (``Mbyte``, ``us``, ``Gbyte/second``) to its base unit.

    Returns:
        ``(value, base_unit)``; units without a known scale (``%``) come back unchanged.
    """
    if unit in _TIME_NS:
        return value * _TIME_NS[unit], "ns"
    match = _UNIT_RE.match(unit)
    if match:
        base = match["base"] + ("/second" if match["rate"] else "")
        return value * _SI[match["prefix"]], base
    return value, unit
