"""Chunk-shape rules for the zarr approaches.

All rules take a tensor shape and return a chunk shape of the same rank, every
entry between 1 and the dimension's size (a 0-sized dimension gets a chunk of 1,
which zarr requires). They are pure functions so the tests can pin them on edge
cases: 1-D tensors, tensors smaller than a chunk, prime dimensions.
"""

from __future__ import annotations

import math
from typing import Sequence


def per_dim(shape: Sequence[int], n: int) -> tuple[int, ...]:
    """zarr's meaning of ``chunks=n``: n elements along every dimension, clipped
    to the dimension (a 3200x3200 matrix with n=64 is 50x50 = 2,500 chunks)."""
    if n < 1:
        raise ValueError(f"chunk size must be >= 1 element, got {n}")
    return tuple(max(1, min(int(d), n)) for d in shape)


def contiguous(shape: Sequence[int], itemsize: int, target_bytes: int) -> tuple[int, ...]:
    """C-order contiguous blocks of at most ``target_bytes``: whole trailing
    dimensions first (so for a matrix, whole rows); the first dimension that
    does not fit whole is split into the fewest pieces that fit, of equal
    size (so a zarr v2 edge chunk, stored at full size, is not mostly padding:
    640 rows at 409 rows per MiB give 2 chunks of 320, not 409 + 231 padded to
    409); leading dimensions get 1. A single element larger than the budget
    still gets a chunk of one element. Example: (3200, 3200) float32 at 1 MiB
    gives (80, 3200): 40 chunks of 1,024,000 bytes."""
    if target_bytes < itemsize:
        raise ValueError(f"chunk budget {target_bytes} B is smaller than one {itemsize}-byte element")
    budget = target_bytes // itemsize  # elements per chunk
    chunk = [1] * len(shape)
    inner = 1  # elements in the chunk so far (product of the trailing dims)
    for i in range(len(shape) - 1, -1, -1):
        d = max(1, int(shape[i]))
        if inner * d <= budget:
            chunk[i] = d
            inner *= d
        else:
            fit = max(1, budget // inner)  # slices of dim i that fit in one chunk
            pieces = -(-d // fit)
            chunk[i] = -(-d // pieces)
            break
    return tuple(chunk)


def t5x(shape: Sequence[int], itemsize: int, target_bytes: int = 64 << 20) -> tuple[int, ...]:
    """T5X's rule: start from the full shape and, while the chunk holds more than
    ``target_bytes``, step the largest chunk dimension (the first, on a tie) down
    to its next smaller divisor of that dimension's size. Chunks therefore tile
    each dimension exactly (no partial edge chunks)."""
    if target_bytes < itemsize:
        raise ValueError(f"chunk budget {target_bytes} B is smaller than one {itemsize}-byte element")
    target_elems = max(1, target_bytes // itemsize)
    divisors = [[f for f in range(1, max(1, int(d)) + 1) if max(1, int(d)) % f == 0] for d in shape]
    while math.prod(f[-1] for f in divisors) > target_elems:
        largest = max(range(len(divisors)), key=lambda i: (divisors[i][-1], -i))
        divisors[largest].pop()
    return tuple(f[-1] for f in divisors)


def whole(shape: Sequence[int]) -> tuple[int, ...]:
    """One chunk holding the whole tensor."""
    return tuple(max(1, int(d)) for d in shape)


def n_chunks(shape: Sequence[int], chunk: Sequence[int]) -> int:
    """How many chunk files a zarr array of ``shape`` split in ``chunk`` has."""
    return math.prod(math.ceil(max(1, int(d)) / c) for d, c in zip(shape, chunk)) if shape else 1
