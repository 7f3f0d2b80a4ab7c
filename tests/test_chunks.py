"""The chunk-shape rules on edge cases."""

import math

import pytest

from llama_ckpt.formats import chunks


def chunk_bytes(c, itemsize=4):
    return math.prod(c) * itemsize


@pytest.mark.parametrize("shape,expected", [
    ((3200, 3200), (64, 64)),       # 2,500 chunks, zarr's meaning of chunks=64
    ((3200,), (64,)),               # 1-D
    ((10, 7), (10, 7)),             # smaller than a chunk: clipped to the tensor
    ((97, 89), (64, 64)),           # prime dimensions: partial edge chunks
    ((0, 5), (1, 5)),               # an empty dimension still gets a chunk of 1
    ((), ()),                       # a scalar
])
def test_per_dim(shape, expected):
    assert chunks.per_dim(shape, 64) == expected


def test_per_dim_counts_2500_chunks_for_a_3200_square():
    assert chunks.n_chunks((3200, 3200), chunks.per_dim((3200, 3200), 64)) == 2500


@pytest.mark.parametrize("shape", [(3200, 3200), (8640, 3200), (3200, 8640), (32000, 3200), (3200,), (97, 89),
                                   (7,), (1, 1), (640, 640), (1728, 640), (5, 3, 1 << 20)])
def test_contiguous_never_exceeds_budget_and_covers_whole_rows_when_they_fit(shape):
    c = chunks.contiguous(shape, 4, 1 << 20)
    assert len(c) == len(shape)
    assert all(1 <= ci <= max(1, d) for ci, d in zip(c, shape))
    assert chunk_bytes(c) <= 1 << 20 or math.prod(c) == 1
    row_bytes = math.prod(shape[1:]) * 4 if len(shape) > 1 else 4
    if len(shape) == 2 and row_bytes <= 1 << 20:
        assert c[1] == shape[1]  # whole rows


def test_contiguous_examples():
    assert chunks.contiguous((3200, 3200), 4, 1 << 20) == (80, 3200)  # 40 chunks of 1,024,000 B
    assert chunks.contiguous((3200,), 4, 1 << 20) == (3200,)  # small 1-D: one chunk
    assert chunks.contiguous((1 << 20,), 4, 1 << 20) == (1 << 18,)
    # a row larger than the budget is split within the row
    assert chunks.contiguous((4, 1 << 19), 4, 1 << 20) == (1, 1 << 18)


def test_contiguous_splits_evenly_so_edge_chunks_are_not_mostly_padding():
    # 409 rows of 640 float32 fit in 1 MiB; 640 rows split as 2 x 320, not 409 + 231
    assert chunks.contiguous((640, 640), 4, 1 << 20) == (320, 640)
    for rows in (641, 1728, 32000, 4099):
        c = chunks.contiguous((rows, 640), 4, 1 << 20)
        n = math.ceil(rows / c[0])
        assert n * c[0] - rows < n  # padding below one row per chunk


def test_contiguous_element_larger_than_budget_is_an_error():
    with pytest.raises(ValueError):
        chunks.contiguous((4,), 4, 2)


@pytest.mark.parametrize("shape,target,expected", [
    ((32000, 3200), 64 << 20, (4000, 3200)),   # 409.6 MB -> halve the 32000 until <= 64 MiB
    ((8640, 3200), 64 << 20, (4320, 3200)),
    ((3200, 3200), 64 << 20, (3200, 3200)),    # 40.96 MB fits whole
    ((3200,), 64 << 20, (3200,)),              # 1-D, fits
    ((97, 89), 64, (1, 1)),                    # primes: divisors are 1 and themselves
    ((12,), 16, (4,)),                         # 12 -> 6 -> 4 elements (16 B = 4 float32)
    ((6, 6), 36, (3, 3)),                      # tie: first dimension steps first, then the second
])
def test_t5x_divisor_rule(shape, target, expected):
    c = chunks.t5x(shape, 4, target)
    assert c == expected
    assert all(d % ci == 0 for d, ci in zip(shape, c))  # chunks tile exactly
    assert chunk_bytes(c) <= target or math.prod(c) == 1


def test_whole():
    assert chunks.whole((3, 5)) == (3, 5)
    assert chunks.n_chunks((3, 5), chunks.whole((3, 5))) == 1
