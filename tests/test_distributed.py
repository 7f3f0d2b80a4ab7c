"""Sharded checkpoints over torch.distributed (gloo): N ranks save, M ranks load."""

import json
import os
import re

import pytest
import torch

from llama_ckpt.bench import ranks
from llama_ckpt.checkpoint import shard_rows
from llama_ckpt.formats.tensorstore import row_chunk
from llama_ckpt.registry import APPROACHES, names

from .helpers import assert_one_line_error, cli, cli_here


@pytest.mark.parametrize("rows, world", [(64, 1), (64, 3), (1000, 4), (5, 4), (3, 4), (32000, 3)])
def test_shards_are_contiguous_cover_every_row_once_and_match_torch_chunk(rows, world):
    import torch

    spans = [shard_rows(rows, r, world) for r in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap
    chunks = torch.arange(rows).chunk(world)
    for r, (a, b) in enumerate(spans):
        want = chunks[r].tolist() if r < len(chunks) else []
        assert list(range(a, b)) == want


@pytest.mark.parametrize("shape, world", [((32000, 640), 2), ((1728, 640), 3), ((640,), 4), ((3200, 8640), 4),
                                          ((97, 640), 2)])
def test_ts_sharded_chunks_divide_the_shards_and_stay_under_the_target(shape, world):
    target = APPROACHES["ts-sharded"].k.chunk_size
    c = row_chunk(shape, 4, world, target)
    s = -(-shape[0] // world)
    assert s % c == 0  # every shard boundary is a chunk boundary: no two ranks write one chunk
    row_bytes = 4 * (shape[1] if len(shape) > 1 else 1)
    assert c * row_bytes <= target or c == 1


def _rows(tmp_path):
    f = next((tmp_path / "results").glob("*.jsonl"))
    return [json.loads(l) for l in f.read_text().splitlines() if json.loads(l)["record"] == "measurement"]


def test_two_ranks_save_three_ranks_load_every_approach_verified(tmp_path):
    r = cli("run", "--approach", "all", "--world-size", "2", "--load-world-size", "3", "--model", "tiny",
            "--repeats", "1", "--out", str(tmp_path), "--keep")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _rows(tmp_path)
    assert sorted(x["approach"] for x in rows) == sorted(names(sharded=True))
    for x in rows:
        assert x["verified"] and not x["error"], x["error"]
        assert x["world_size"] == 2 and x["load_world_size"] == 3
        assert [k["rank"] for k in x["ranks_save"]] == [0, 1] and [k["rank"] for k in x["ranks_load"]] == [0, 1, 2]
        assert all(k["verified"] for k in x["ranks_load"])
        # each rank's work is counted, and the row's is every rank's added up
        assert all(k["work"]["storage_write_bytes"] > 0 for k in x["ranks_save"])
        assert x["cpu_io_save"]["storage_write_bytes"] == sum(k["work"]["storage_write_bytes"] for k in x["ranks_save"])
        assert x["cpu_io_load"]["read_calls"] == sum(k["work"]["read_calls"] for k in x["ranks_load"])
        assert sum(k["bytes"] for k in x["ranks_save"]) == sum(k["bytes"] for k in x["ranks_load"])
        assert x["save_s"] >= max(k["write_s"] for k in x["ranks_save"])  # the slowest rank bounds the checkpoint
        assert x["load_cold"] is True
        assert all(k["host"] for k in x["ranks_save"] + x["ranks_load"])
    assert "ranks beyond 2 share them" in r.stdout or os.cpu_count() > 2
    # verify checks every shard of every kept checkpoint against the digests gathered at save
    kept = sorted(p.parent for p in (tmp_path / "checkpoints").rglob("COMMITTED"))
    assert len(kept) == len(rows)
    v = cli_here("verify", *map(str, kept))
    assert v.returncode == 0 and v.stdout.count("in 2 shards") == len(rows), v.stdout
    # a flipped byte in rank 1's data is named with its tensor and shard
    for ckpt in kept:
        victim = _rank1_data_file(ckpt)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
        bad = cli_here("verify", str(ckpt))
        assert bad.returncode == 1 and "NOT OK" in bad.stdout, bad.stdout
        # OCDBT packs every rank's chunks into shared data files: any shard may be the damaged one
        shard = r"\d" if "ocdbt" in ckpt.name else "1"
        assert re.search(rf"\.weight shard {shard} of 2 \(rows \d+-\d+, .*\): bytes differ", bad.stdout), bad.stdout


def _rank1_data_file(ckpt):
    """A file holding only rank 1's rows of some tensor: its rank file, a
    chunk past the middle of a row-chunked array, or the largest data file."""
    if (ckpt / "rank1.pth").exists():
        return ckpt / "rank1.pth"
    embed = ckpt / "model.embed_tokens.weight"
    if embed.is_dir():  # zarr chunks named by row-chunk index: the last one is in rank 1's half
        return max((p for p in embed.iterdir() if p.name[0].isdigit()), key=lambda p: int(p.name.split(".")[0]))
    dcp = sorted(ckpt.glob("__1_*.distcp"))  # DCP: one file per rank (and writer thread)
    if dcp:
        return dcp[0]
    skip = {"manifest.json", "COMMITTED", ".metadata", "manifest.ocdbt"}
    files = [p for p in ckpt.rglob("*") if p.is_file() and p.name not in skip]
    return max(files, key=lambda p: (p.stat().st_size, p.name))


def test_four_ranks_save_two_ranks_load(tmp_path):
    r = cli("run", "--approach", "ts-sharded+ocdbt,pytorch-per-rank,dcp-sharded", "--world-size", "4",
            "--load-world-size", "2", "--model", "tiny", "--repeats", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _rows(tmp_path)
    assert len(rows) == 3 and all(x["verified"] for x in rows)
    assert all(len(x["ranks_save"]) == 4 and len(x["ranks_load"]) == 2 for x in rows)


@pytest.mark.parametrize("approach", ["ts-sharded+ocdbt", "pytorch-per-rank"])
def test_a_rank_killed_mid_save_leaves_no_checkpoint_and_the_others_do_not_hang(tmp_path, approach):
    env = dict(os.environ, **{ranks.FAULT_ENV: "kill-rank-1-mid-save"})
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llama_ckpt", "run", "--approach", approach, "--world-size", "2",
                        "--model", "tiny", "--repeats", "1", "--out", str(tmp_path), "--keep"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    (row,) = _rows(tmp_path)
    assert row["error"].startswith("save failed") and "rank 1 died (killed by signal 9)" in row["error"]
    assert "rank 0 failed while" in row["error"]  # the survivor exited with an error naming its step
    ckpts = tmp_path / "checkpoints"
    assert not any(p.name == "COMMITTED" for p in ckpts.rglob("*"))
    assert not [p for p in ckpts.rglob("*") if ".tmp-" in p.name]  # the temporary went too


def test_bad_distributed_input_is_one_line(tmp_path):
    assert_one_line_error(cli_here("run", "--load-world-size", "2", "--model", "tiny", "--out", str(tmp_path)),
                          "needs --world-size")
    assert_one_line_error(cli_here("run", "--approach", "pytorch", "--world-size", "2", "--model", "tiny",
                              "--out", str(tmp_path)), "unknown approach", "ts-sharded")
    assert_one_line_error(cli_here("run", "--approach", "ts-sharded", "--model", "tiny", "--out", str(tmp_path)),
                          "run with --world-size")
    assert_one_line_error(cli_here("run", "--world-size", "0", "--model", "tiny", "--out", str(tmp_path)), "at least 1")


def test_list_shows_the_sharded_approaches():
    r = cli_here("list")
    assert r.returncode == 0
    for name in names(sharded=True):
        assert any(line.startswith(name + " ") for line in r.stdout.splitlines())


def test_06_measures_its_scaling_configurations_at_the_runs_repeats_and_the_others_once(tmp_path, monkeypatch):
    """Which repeats 06 asks for per configuration (the measuring itself is the other tests')."""
    from llama_ckpt.study.phases import DIST_CONFIGS, TORCHRUN_CONFIGS
    from llama_ckpt.suite import kinds

    asked = []
    monkeypatch.setattr(kinds.measure, "run", lambda apps, src, opts, **kw: asked.append(
        ((opts.world_size, opts.load_world_size), opts.repeats)) or ({}, []))
    monkeypatch.setattr(kinds.Sharded, "_torchrun", lambda self, n, k, src: asked.append(((n, k), self._once())) or [])
    kinds.run("06", model="tiny", repeats=3, out_dir=tmp_path, run_id="r", say=lambda s: None)
    assert asked == [(c, 3 if c[0] == c[1] else 1) for c in DIST_CONFIGS] + [(c, 1) for c in TORCHRUN_CONFIGS]


def test_a_sharded_checkpoint_whose_source_was_drawn_another_way_is_not_checked_against_it(monkeypatch, tmp_path):
    from llama_ckpt import checkpoint
    from llama_ckpt.bench import measure
    from llama_ckpt.errors import UserError
    from llama_ckpt.store import at

    monkeypatch.setattr(checkpoint, "read_manifest", lambda loc: {
        "approach": "pytorch-per-rank", "world_size": 2, "source": {"model": "tiny", "seed": 0}})
    with pytest.raises(UserError, match="drawn another way"):
        measure.load_sharded(at(tmp_path), world=2)


@pytest.mark.parametrize("rows", [(0, 1000), (0, 64), (63, 65), (100, 333), (999, 1000)])
def test_a_rank_draws_exactly_the_rows_of_the_whole_tensor(rows):
    from llama_ckpt.model import TensorSpec, seeded_tensor

    for shape in [(1000, 64), (1000,)]:
        s = TensorSpec("model.layers.0.mlp.up_proj.weight", shape, torch.float32)
        whole = seeded_tensor(s, 3, "float16")
        assert torch.equal(seeded_tensor(s, 3, "float16", rows=rows), whole[rows[0]:rows[1]])
