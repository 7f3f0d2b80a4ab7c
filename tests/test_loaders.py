"""The loaders teams deploy: each reads what the suite saved, exactly, with its knobs."""

import os

import pytest

from llama_ckpt.digests import check, expected_digests
from llama_ckpt.registry import APPROACHES, variant


def test_the_streamers_read_the_very_file_safetensors_writes(tiny_sd, tmp_path):
    APPROACHES["safetensors"].save(dict(tiny_sd), tmp_path / "st")
    APPROACHES["runai-streamer"].save(dict(tiny_sd), tmp_path / "runai")
    APPROACHES["fastsafetensors"].save(dict(tiny_sd), tmp_path / "fst")
    data = (tmp_path / "st" / "model.safetensors").read_bytes()
    assert (tmp_path / "runai" / "model.safetensors").read_bytes() == data
    assert (tmp_path / "fst" / "model.safetensors").read_bytes() == data


@pytest.mark.parametrize("base, knobs", [
    ("runai-streamer", dict(concurrency=1)), ("runai-streamer", dict(concurrency=4, memory_limit=0)),
    ("runai-streamer", dict(chunk_bytesize=64 << 10)), ("fastsafetensors", dict(max_threads=1)),
    ("tensorizer", dict(num_readers=1)), ("pytorch-fp32-mmap", {}),
])
def test_each_loader_round_trips_with_its_knobs(tiny_sd, tmp_path, base, knobs):
    a = variant(base, **knobs)
    exp = expected_digests(tiny_sd, {a.stored_dtype})[a.stored_dtype]
    a.save(dict(tiny_sd), tmp_path / "c")
    ours = ("RUNAI_STREAMER_CONCURRENCY", "RUNAI_STREAMER_MEMORY_LIMIT", "RUNAI_STREAMER_CHUNK_BYTESIZE")
    before = {k: os.environ.get(k) for k in ours}
    got = a.load(tmp_path / "c")
    assert check(got, exp).verified
    assert all(t.is_contiguous() for t in got.values())
    # the streamer's settings are environment variables only while it streams
    assert {k: os.environ.get(k) for k in ours} == before


def _mapped(path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from ``path``."""
    out = []
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith(str(path)):
            lo, hi = line.split()[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def test_mmap_load_copies_out_of_the_map(tiny_sd, tmp_path):
    import torch

    a = APPROACHES["pytorch-fp32-mmap"]
    a.save(dict(tiny_sd), tmp_path / "c")
    path = (tmp_path / "c" / "model.pth").resolve()
    raw = torch.load(path, mmap=True, weights_only=True)  # what the approach starts from: tensors in the map
    assert any(lo <= t.data_ptr() < hi for t in raw.values() for lo, hi in _mapped(path))
    got = a.load(tmp_path / "c")
    ranges = _mapped(path)
    assert not any(lo <= t.data_ptr() < hi for t in got.values() for lo, hi in ranges)  # in memory, copied out
    assert check(got, expected_digests(tiny_sd, {a.stored_dtype})[a.stored_dtype]).verified
