"""The sharded benchmark as ranks of jobs started by torchrun: two launches
on this machine act as two nodes (c10d rendezvous on loopback, two ranks
each) and save to a local directory and to the local S3 server; a third
launch of three ranks loads what they saved."""

import json
import re
import time

import pytest

from llama_ckpt.bench import cluster
from llama_ckpt.bench.ranks import add_counts

from .helpers import assert_one_line_error, cli_here
from .test_distributed import _rank1_data_file

APPROACHES = ["ts-sharded+ocdbt", "ts-sharded", "dcp-sharded"]


def torchrun(nnodes: int, nproc: int, args: list[str]):
    return cluster.torchrun(nnodes, nproc, args, timeout=600)


def _out(r) -> str:
    return r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, s3):
    """Both saves, on disk and on S3, each by 2 nodes x 2 ranks, kept."""
    runs = {}
    storages = {"local": [], "s3": ["--storage", "s3://ckpt/cluster", "--s3-endpoint", s3.endpoint]}
    for kind, extra in storages.items():
        out = tmp_path_factory.mktemp(f"cluster-{kind}")
        nodes = torchrun(2, 2, ["run", "--approach", ",".join(APPROACHES), "--model", "tiny", "--repeats", "1",
                                "--keep", "--out", str(out), *extra])
        runs[kind] = (out, nodes)
    return runs


def _rows(out):
    f = next((out / "results").glob("*.jsonl"))
    return [json.loads(l) for l in f.read_text().splitlines()]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_nodes_of_two_ranks_save_and_load_with_their_topology(saved, kind):
    out, nodes = saved[kind]
    assert all(r.returncode == 0 for r in nodes), "\n".join(map(_out, nodes))
    lead = next(r for r in nodes if "results ->" in r.stdout)  # rank 0 speaks; the others are quiet
    other = next(r for r in nodes if r is not lead)
    assert "launched job" not in other.stdout and " verified" not in other.stdout
    assert "4 -> 4 ranks on 2 node(s) x 2" in lead.stdout
    recs = _rows(out)
    env, rows = recs[0], [x for x in recs if x["record"] == "measurement"]
    assert env["launcher"] == "torchrun" and env["world_size"] == 4
    assert recs[-1]["record"] == "end" and recs[-1]["complete"]
    assert sorted(x["approach"] for x in rows) == sorted(APPROACHES)
    for x in rows:
        assert x["verified"] and not x["error"], x["error"]
        assert x["launcher"] == "torchrun" and x["nodes"] == 2 and x["ranks_per_node"] == 2
        assert x["caches_dropped"] is True  # dropped before the job's save (here: the tests' file)
        assert x["world_size"] == x["load_world_size"] == 4
        assert sorted(k["rank"] for k in x["ranks_save"]) == [0, 1, 2, 3]
        assert sorted((k["node"], k["local_rank"]) for k in x["ranks_save"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert all(k["host"] and k["write_s"] > 0 for k in x["ranks_save"])
        assert all(k["verified"] and k["read_s"] > 0 for k in x["ranks_load"])
        assert x["save_s"] >= max(k["write_s"] for k in x["ranks_save"])
        if kind == "s3":
            # every rank's requests are in the row, each counted once (rank 0's are in its own report)
            assert x["storage"] == "s3://ckpt/cluster" and x["n_files"] > 0
            assert x["requests_save"] == add_counts(*(k["requests"] for k in x["ranks_save"]))
            assert x["requests_load"] == add_counts(*(k["requests"] for k in x["ranks_load"]))
            assert all(k["requests"]["write"] > 0 for k in x["ranks_save"])  # each rank wrote its own rows
            assert x["requests_save"]["write"] >= x["n_files"] and x["requests_load"]["read"] >= 4
        else:
            assert x["load_cold"] is True and x["requests_save"] is None


def _kept(out):
    """The kept checkpoints' paths, in the order of ``APPROACHES`` (each round runs in a random order)."""
    rows = [x for x in _rows(out) if x["record"] == "measurement"]
    return [x["path"] for x in sorted(rows, key=lambda x: APPROACHES.index(x["approach"]))]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_job_of_three_ranks_loads_what_four_saved_and_verify_names_a_flipped_shard(saved, kind, s3, tmp_path):
    out, nodes = saved[kind]
    assert all(r.returncode == 0 for r in nodes), "\n".join(map(_out, nodes))
    paths = _kept(out)
    extra = ["--s3-endpoint", s3.endpoint] if kind == "s3" else []
    (load,) = torchrun(1, 3, ["load", *paths, *extra])
    assert load.returncode == 0, _out(load)
    for p, a in zip(paths, APPROACHES):
        line = next(l for l in load.stdout.splitlines() if l.startswith(p + ":"))
        assert f"{a} saved by 4 ranks, loaded by 3 on 1 node(s)" in line and "verified" in line, line
        assert "NOT" not in line
    v = cli_here("verify", *paths, *extra)
    assert v.returncode == 0 and v.stdout.count("in 4 shards") == 3, v.stdout
    if kind == "s3":
        return
    from pathlib import Path

    for ckpt in map(Path, paths):
        victim = _rank1_data_file(ckpt)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
        bad = cli_here("verify", str(ckpt))
        assert bad.returncode == 1 and re.search(r"\.weight shard \d of 4 \(rows \d+-\d+, .*\): bytes differ",
                                                 bad.stdout), bad.stdout
    # and a job loading one says which rank's rows do not match the source
    (again,) = torchrun(1, 3, ["load", str(ckpt)])
    # (a rank whose read fails outright ends the job with its error instead)
    assert again.returncode != 0 and ("NOT VERIFIED: verification failed: rank " in again.stdout
                                      or "failed while reading this rank's rows" in again.stderr), _out(again)


def test_launcher_input_is_checked_in_one_line(monkeypatch, tmp_path):
    for k, v in dict(RANK="0", WORLD_SIZE="4", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(k, v)
    assert cluster.launched()
    assert_one_line_error(cli_here("run", "--world-size", "3", "--model", "tiny", "--out", str(tmp_path)),
                          "--world-size 3 under a launcher of 4 ranks")
    assert_one_line_error(cli_here("run", "--load-world-size", "3", "--model", "tiny", "--out", str(tmp_path)),
                          "loads on its own 4 ranks", "llama_ckpt load")
    assert_one_line_error(cli_here("run", "--approach", "pytorch", "--model", "tiny", "--out", str(tmp_path)),
                          "unknown approach")
    assert_one_line_error(cli_here("run", "--model", "tiny", "--out", str(tmp_path), "--storage", "s3://b/p",
                                   "--s3-endpoint", "http://127.0.0.1:9", "--s3-delay-ms", "20"),
                          "--s3-delay-ms", "other nodes")


def test_load_without_a_launcher_needs_a_world_size_and_a_sharded_checkpoint(tmp_path, tiny):
    assert_one_line_error(cli_here("load", str(tmp_path)), "--world-size N", "torchrun")
    r = cli_here("load", "--world-size", "2", str(tmp_path / "nothing"))
    assert r.returncode == 1 and "NOT LOADED" in r.stdout and "no such checkpoint" in r.stdout
    from llama_ckpt.registry import APPROACHES as ALL

    ALL["pytorch"].save(tiny.materialize(), tmp_path / "one")
    r = cli_here("load", "--world-size", "2", str(tmp_path / "one"))
    assert r.returncode == 1 and "not sharded" in r.stdout


def test_storage_that_a_node_does_not_share_stops_the_run_in_one_line(tmp_path):
    """Each launch in its own working directory with a relative --out: like
    two machines without a shared file system."""
    cwds = [tmp_path / "node-a", tmp_path / "node-b"]
    for d in cwds:
        d.mkdir()
    t0 = time.monotonic()
    procs = cluster.torchrun(2, 1, ["run", "--approach", "ts-sharded", "--model", "tiny", "--repeats", "1",
                                    "--out", "out"], timeout=600, cwds=cwds)
    assert time.monotonic() - t0 < 240  # a hang guard: torchrun's exit barrier would hold the other node 300 s
    lead = next(p for p in procs if "not shared" in p.stderr)
    assert lead.returncode != 0
    line = next(l for l in lead.stderr.splitlines() if "not shared" in l)
    assert line.startswith("python -m llama_ckpt run: error: the checkpoint storage ") and "rank 1" in line, line
    assert "llama_ckpt/" not in lead.stderr  # no traceback of ours (torchrun prints its own for a failed rank)
    other = next(p for p in procs if p is not lead)
    # told to stop by rank 0 with its exit code, not hung: a node whose ranks all exited 0 would keep
    # torchrun waiting 5 minutes at its exit barrier for the failed one
    assert "killed after" not in other.stderr and "llama_ckpt/" not in other.stderr, _out(other)
    assert other.returncode != 0
    assert not [p for d in cwds for p in d.rglob("*") if "COMMITTED" in p.name or ".tmp-" in p.name]


def test_a_step_that_fails_is_raised_after_every_rank_answered(tmp_path):
    """ask() gathers before it raises, so the group stays in step for the next step."""
    import torch.distributed as dist

    from llama_ckpt.store import LocalDir

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        group = cluster.Group(0, 1, 0, 1, dist)
        with pytest.raises(ValueError, match="unknown step"):
            cluster.ask(group, "no such step")
        root = LocalDir(tmp_path / "root")
        cluster.check_shared(group, root)  # the next step still works: the probe is seen, then removed
        assert not list((tmp_path / "root").iterdir())
    finally:
        dist.destroy_process_group()
