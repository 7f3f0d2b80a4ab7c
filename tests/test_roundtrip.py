"""Every registered approach round-trips on the tiny model, saves the same
tensor set, and writes the on-disk configuration its registry row says."""

import json

import pytest
import torch

from llama_ckpt.checkpoint import COMMIT, MANIFEST
from llama_ckpt.formats.tensorstore import TensorStoreZarr, TSKnobs
from llama_ckpt.formats.torch_save import TorchSave
from llama_ckpt.registry import APPROACHES, names, resolve, sweep, variant
from llama_ckpt.store import LocalDir
from llama_ckpt.errors import UserError
from llama_ckpt.model import get_model
from llama_ckpt.digests import check, expected_digests

from .conftest import clone

SINGLE = names()


def test_registry_opens_with_the_guides_eight():
    guide = names(tag="guide")
    assert len(guide) == 8 and SINGLE[:8] == guide and guide[0] == "pytorch"
    assert all(isinstance(APPROACHES[n], TensorStoreZarr) for n in guide[1:])


@pytest.fixture(scope="module")
def expected(tiny_sd):
    return expected_digests(tiny_sd, {APPROACHES[n].stored_dtype for n in SINGLE})


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_sd):
    """One checkpoint per approach, saved once for the module."""
    root = tmp_path_factory.mktemp("ckpt")
    for name in SINGLE:
        APPROACHES[name].save(clone(tiny_sd), root / name)
    return root


@pytest.mark.parametrize("name", SINGLE)
def test_round_trip_is_bit_exact_in_the_stored_dtype(name, saved, expected, tiny_sd):
    a = APPROACHES[name]
    loaded = a.load(saved / name)
    assert set(loaded) == set(tiny_sd)
    assert all(t.dtype == a.stored_dtype for t in loaded.values())
    v = check(loaded, expected[a.stored_dtype])
    assert v.verified, v.summary()
    if a.stored_dtype == torch.float32:
        assert all(torch.equal(loaded[k], tiny_sd[k]) for k in tiny_sd)
    elif a.stored_dtype == torch.float16:
        assert v.max_abs_err == 0  # float16-origin weights (the default): the cast is exact
    else:
        assert v.max_abs_err > 0  # bfloat16 loses precision on them, and says how much


@pytest.mark.parametrize("name", SINGLE)
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
    kv = ts.KvStore.open(a.kvstore(LocalDir(root / name), tensor)).result()
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
    ctx = APPROACHES[name].context(LocalDir(saved)).spec.to_json()
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
    spec = APPROACHES["ts+ocdbt"].kvstore(LocalDir("relative/dir"), "t")
    assert spec["base"] == {"driver": "file", "path": f"{tmp_path}/relative/dir/"}


def test_chunk_rules_in_the_approaches_on_the_real_shapes():
    big = get_model("open_llama_3b")
    shapes = {s.name: s.shape for s in big.specs}
    q = shapes["model.layers.0.self_attn.q_proj.weight"]
    assert APPROACHES["tensorstore"].chunk_shape(q, 4) == (64, 64)
    assert APPROACHES["ts+chunks"].chunk_shape(q, 4) == (80, 3200)
    assert APPROACHES["t5x"].chunk_shape(shapes[EMBED], 4) == (4000, 3200)


def test_pytorch_stores_float16_in_one_file(saved):
    files = sorted(p.name for p in (saved / "pytorch").iterdir())
    assert files == sorted([TorchSave.FILE, MANIFEST, COMMIT])
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
    assert [a.name for a in resolve("all")] == SINGLE
    assert [a.name for a in resolve("all", sharded=True)] == names(sharded=True)
    assert [a.name for a in resolve("t5x, pytorch")] == ["t5x", "pytorch"]
    with pytest.raises(UserError, match="unknown approach 'nope'.*valid approaches: all, pytorch"):
        resolve("pytorch,nope")


def test_knobs_are_frozen_and_validated():  # noqa: D103
    import dataclasses

    k = TSKnobs()
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.concurrency = 2
    for bad in (dict(chunk_size=0), dict(concurrency=0), dict(dtype="int3"), dict(compression="lzma"),
                dict(chunk_rule="random"), dict(compression="gzip:12")):
        with pytest.raises(ValueError):
            TSKnobs(**bad)
    assert isinstance(APPROACHES["ts+ocdbt"], TensorStoreZarr) and APPROACHES["ts+ocdbt"].k.use_ocdbt


# -- beyond the guide ----------------------------------------------------------

def test_every_approach_stores_the_dtype_its_knobs_say():
    for a in APPROACHES.values():
        assert str(a.stored_dtype) == f"torch.{a.k.dtype}", a.name
    assert APPROACHES["ts+best16"].stored_dtype == torch.float16
    assert APPROACHES["ts+bfloat16"].stored_dtype == torch.bfloat16


def test_safetensors_file_has_every_tensor_in_float32(saved, tiny_sd):
    from safetensors import safe_open

    with safe_open(str(saved / "safetensors" / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(tiny_sd)
        assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())


def test_dcp_writes_metadata_and_a_file_per_writer_thread(saved):
    files = sorted(p.name for p in (saved / "dcp").iterdir())
    assert ".metadata" in files
    distcp = [f for f in files if f.endswith(".distcp")]
    assert 1 <= len(distcp) <= APPROACHES["dcp"].threads()


def test_zarr3_is_one_shard_per_tensor_with_inner_chunks(saved):
    d = saved / "ts+zarr3" / EMBED
    meta = json.loads((d / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["data_type"] == "float32"
    (codec,) = meta["codecs"]
    assert codec["name"] == "sharding_indexed"
    inner = codec["configuration"]["chunk_shape"]
    assert inner == list(APPROACHES["ts+zarr3"].chunk_shape((1000, 64), 4))
    shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
    assert all(s >= d_ and s % i == 0 for s, d_, i in zip(shard, [1000, 64], inner))  # one shard covers it
    data = [p for p in d.rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(data) == 1  # the shard


def test_ts_best_is_one_ocdbt_database_with_large_chunks(saved):
    import tensorstore as ts

    a = APPROACHES["ts+best"]
    assert a.k.use_ocdbt and a.k.transaction and a.k.reference_source and a.k.concurrency == 8
    assert a.k.target_data_file_size == 64 << 20 and a.k.commit_bytes == 1 << 30
    root = saved / "ts+best"
    assert (root / "manifest.ocdbt").is_file()
    n_files = sum(1 for p in root.rglob("*") if p.is_file())
    assert n_files <= 6  # manifest.json, COMMITTED, manifest.ocdbt and a few data files: one transaction
    kv = ts.KvStore.open(a.kvstore(LocalDir(root), EMBED)).result()
    meta = json.loads(kv.read(".zarray").result().value)
    assert meta["chunks"] == [1000, 64] and meta["dtype"] == "<f4"
    assert APPROACHES["ts+best16"].k == dataclasses_replace(a.k, dtype="float16")


def dataclasses_replace(k, **kw):
    import dataclasses

    return dataclasses.replace(k, **kw)


def test_bfloat16_round_trips_bit_exactly(saved, tiny_sd):
    loaded = APPROACHES["ts+bfloat16"].load(saved / "ts+bfloat16")
    assert all(torch.equal(loaded[k], tiny_sd[k].to(torch.bfloat16)) for k in tiny_sd)


def test_sweep_expands_the_product_and_reuses_registered_names():
    got = [a.name for a in sweep("tensorstore", concurrency=[1, 4, 128])]
    assert got == ["tensorstore", "tensorstore[concurrency=4]", "ts+concurrency"]
    grid = sweep("ts+chunks", chunk_size=[1 << 16, 1 << 20], use_ocdbt=[False, True])
    assert [a.name for a in grid] == ["ts+chunks[chunk_size=64KiB]", "ts+chunks[chunk_size=64KiB,use_ocdbt=True]",
                                      "ts+chunks", "ts+chunks[use_ocdbt=True]"]
    assert variant("tensorstore", dtype="bfloat16").name == "ts+bfloat16"
    with pytest.raises(UserError, match="bad knob"):
        variant("tensorstore", chunk_size=-1)
    with pytest.raises(UserError, match="bad knob"):
        variant("tensorstore", colour="red")
    with pytest.raises(UserError, match="at least one value"):
        sweep("tensorstore", concurrency=[])
