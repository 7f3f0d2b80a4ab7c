"""Byte sizes and how they are written: binary units for a knob's budget, decimal for a measured size, one label each.

Two kinds of figure, two ways: a knob's byte budget (a chunk, a data file, a
buffer) is a power-of-two amount named in binary units, exactly
(:func:`binary_label`: ``16 MiB``, in an approach's name ``16MiB``); a
measured size (a checkpoint on disk, a memory peak) is rounded in decimal
units (:func:`fmt_bytes`: ``1.23 GB``).
"""

from __future__ import annotations

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def binary_label(n: float, sep: str = " ") -> str:
    """``n`` bytes in the largest binary unit that divides it exactly (MiB, then KiB), else in bytes:
    ``binary_label(16 << 20) == "16 MiB"``, ``binary_label(1536 << 10) == "1536 KiB"``,
    ``binary_label(1000) == "1000 B"``. ``sep`` goes between number and unit (an approach's name has none:
    ``16MiB``). Exact, so a label reads back as the same number of bytes."""
    if n != n or n in (float("inf"), float("-inf")) or n != int(n):  # not a whole number of bytes
        return f"{n:g}{sep}B"
    n = int(n)
    if n and n % MiB == 0:
        return f"{n // MiB}{sep}MiB"
    if n and n % KiB == 0:
        return f"{n // KiB}{sep}KiB"
    return f"{n}{sep}B"


def fmt_bytes(n: float | None) -> str:
    """A measured size in decimal units, two decimals: ``1.23 GB``, ``45.60 MB``, ``512 B``; "-" for none."""
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"
