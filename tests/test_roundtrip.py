"""Every registered approach round-trips on the tiny model, saves the same
tensor set, and writes the on-disk configuration its registry row says."""

import json

import pytest
import torch

from llama_ckpt.approaches import APPROACHES, MANIFEST, TensorStoreZarr, TorchSave, resolve
from llama_ckpt.errors import UserError
from llama_ckpt.model import get_model
from llama_ckpt.verify import check, expected_digests

from .conftest import clone

GUIDE = ["pytorch", "tensorstore", "t5x", "ts+concurrency", "ts+chunks", "ts+compression", "ts+float16", "ts+ocdbt"]


def test_registry_has_the_guides_eight_in_order():
    assert list(APPROACHES)[:8] == GUIDE


@pytest.fixture(scope="module")
def expected(tiny_sd):
    return expected_digests(tiny_sd, {torch.float32, torch.float16})


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_sd):
    """One checkpoint per approach, saved once for the module."""
    root = tmp_path_factory.mktemp("ckpt")
    for name, a in APPROACHES.items():
        a.save(clone(tiny_sd), root / name)
    return root


@pytest.mark.parametrize("name", list(APPROACHES))
def test_round_trip_is_bit_exact_in_the_stored_dtype(name, saved, expected, tiny_sd):
    a = APPROACHES[name]
    loaded = a.load(saved / name)
    assert set(loaded) == set(tiny_sd)
    assert all(t.dtype == a.stored_dtype for t in loaded.values())
    v = check(loaded, expected[a.stored_dtype])
    assert v.verified, v.summary()
    if a.stored_dtype == torch.float32:
        assert all(torch.equal(loaded[k], tiny_sd[k]) for k in tiny_sd)
    else:
        assert v.max_abs_err > 0  # float16 loses precision, and says how much


@pytest.mark.parametrize("name", list(APPROACHES))
def test_manifest_lists_every_tensor(name, saved, tiny_sd):
    m = json.loads((saved / name / MANIFEST).read_text())
    assert m["approach"] == name
    assert [t["name"] for t in m["tensors"]] == list(tiny_sd)
    assert [tuple(t["shape"]) for t in m["tensors"]] == [tuple(v.shape) for v in tiny_sd.values()]


def test_a_tampered_tensor_fails_verification(saved, expected):
    loaded = APPROACHES["tensorstore"].load(saved / "tensorstore")
    name = next(iter(loaded))
    loaded[name].view(-1)[0] += 1e-3
    v = check(loaded, expected[torch.float32])
    assert not v.verified and name in v.summary()


def _zarray(root, name, tensor):
    import tensorstore as ts

    a = APPROACHES[name]
    kv = ts.KvStore.open(a.kvstore(root / name, tensor)).result()
    return json.loads(kv.read(".zarray").result().value)


EMBED = "model.embed_tokens.weight"  # (1000, 64) in tiny
MLP = "model.layers.0.mlp.gate_proj.weight"  # (172, 64)


@pytest.mark.parametrize("name,dtype,compressor,chunks_embed,concurrency", [
    ("tensorstore", "<f4", None, [64, 64], 1),
    ("t5x", "<f4", {"id": "gzip", "level": 1}, [1000, 64], 128),  # 256 kB: one chunk under 64 MiB
    ("ts+concurrency", "<f4", None, [64, 64], 128),
    ("ts+chunks", "<f4", None, [1000, 64], 1),  # 256 kB fits in 1 MiB whole
    ("ts+compression", "<f4", {"id": "gzip", "level": 1}, [64, 64], 1),
    ("ts+float16", "<f2", None, [64, 64], 1),
    ("ts+ocdbt", "<f4", None, [64, 64], 1),
])
def test_on_disk_configuration(name, dtype, compressor, chunks_embed, concurrency, saved):
    meta = _zarray(saved, name, EMBED)
    assert meta["zarr_format"] == 2
    assert meta["dtype"] == dtype
    assert meta["compressor"] == compressor
    assert meta["chunks"] == chunks_embed
    assert meta["shape"] == [1000, 64]
    ctx = APPROACHES[name].context().spec.to_json()
    assert ctx["file_io_concurrency"] == {"limit": concurrency}
    assert ctx["file_io_sync"] is True


def test_ocdbt_is_one_database_and_the_rest_are_files(saved):
    ocdbt = saved / "ts+ocdbt"
    assert (ocdbt / "manifest.ocdbt").is_file()
    assert not (ocdbt / EMBED).exists()  # no per-tensor directories: chunks live in the database
    plain = saved / "tensorstore" / EMBED
    assert (plain / ".zarray").is_file()
    assert len([p for p in plain.iterdir() if p.name != ".zarray"]) == 16 * 1  # 1000x64 at 64: 16 x 1 chunks


def test_ocdbt_base_is_absolute_whatever_path_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = APPROACHES["ts+ocdbt"].kvstore("relative/dir", "t")
    assert spec["base"] == f"file://{tmp_path}/relative/dir/"


def test_chunk_rules_in_the_approaches_on_the_real_shapes():
    big = get_model("open_llama_3b")
    shapes = {s.name: s.shape for s in big.specs}
    q = shapes["model.layers.0.self_attn.q_proj.weight"]
    assert APPROACHES["tensorstore"].chunk_shape(q, 4) == (64, 64)
    assert APPROACHES["ts+chunks"].chunk_shape(q, 4) == (80, 3200)
    assert APPROACHES["t5x"].chunk_shape(shapes[EMBED], 4) == (4000, 3200)


def test_pytorch_stores_float16_in_one_file(saved):
    files = sorted(p.name for p in (saved / "pytorch").iterdir())
    assert files == sorted([TorchSave.FILE, MANIFEST])
    sd = torch.load(saved / "pytorch" / TorchSave.FILE, weights_only=True)
    assert all(t.dtype == torch.float16 for t in sd.values())


def test_bfloat16_source_is_stored_losslessly_in_float32(tmp_path, tiny_sd):
    src = {k: v.to(torch.bfloat16) for k, v in tiny_sd.items()}
    exp = expected_digests(src, {torch.float32})
    a = APPROACHES["tensorstore"]
    a.save(clone(src), tmp_path / "c")
    v = check(a.load(tmp_path / "c"), exp[torch.float32])
    assert v.verified and v.max_abs_err == 0.0


def test_save_refuses_an_existing_path(tmp_path, tiny_sd):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError):
        APPROACHES["pytorch"].save(clone(tiny_sd), tmp_path / "x")


def test_loading_with_the_wrong_approach_names_both(saved):
    with pytest.raises(UserError, match="'pytorch'.*'tensorstore'"):
        APPROACHES["tensorstore"].load(saved / "pytorch")


def test_resolve():
    assert [a.name for a in resolve("all")] == list(APPROACHES)
    assert [a.name for a in resolve("t5x, pytorch")] == ["t5x", "pytorch"]
    with pytest.raises(UserError, match="unknown approach 'nope'.*valid approaches: all, pytorch"):
        resolve("pytorch,nope")


def test_knobs_are_frozen_and_validated():
    from llama_ckpt.approaches import TSKnobs
    import dataclasses

    k = TSKnobs()
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.concurrency = 2
    for bad in (dict(chunk_size=0), dict(concurrency=0), dict(dtype="int3"), dict(compression="lzma"),
                dict(chunk_rule="random"), dict(compression="gzip:12")):
        with pytest.raises(ValueError):
            TSKnobs(**bad)
    assert isinstance(APPROACHES["ts+ocdbt"], TensorStoreZarr) and APPROACHES["ts+ocdbt"].k.use_ocdbt
