"""Checkpoints on S3: a real SeaweedFS server on loopback, started here."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from llama_ckpt.store import server as s3_server
from llama_ckpt.bench import measure
from llama_ckpt.checkpoint import COMMIT, read_manifest
from llama_ckpt.digests import check, expected_digests
from llama_ckpt.errors import UserError
from llama_ckpt.registry import APPROACHES, names
from llama_ckpt.netdelay import delayed, measure_rtt
from llama_ckpt.store.s3 import Target, check_target
from llama_ckpt.verify import verify

from .helpers import assert_one_line_error, cli, cli_here

ON_S3 = [n for n in names() if not APPROACHES[n].s3_unsupported]


@pytest.fixture(scope="module")
def server(s3):
    return s3


def target(server, url="s3://ckpt/tests", **kw):
    t = Target.parse(url, server.endpoint, server_dir=server.data_dir, **kw)
    check_target(t)  # the bucket exists whichever test runs first
    return t


def test_list_says_why_an_approach_cannot_target_s3():
    r = cli_here("list")
    for n, a in APPROACHES.items():
        line = next(l for l in r.stdout.splitlines() if l.startswith(n + " "))
        assert ("not on S3" in line) == bool(a.s3_unsupported), line


def test_every_s3_approach_round_trips_with_objects_and_requests(server, tiny, tmp_path):
    t = target(server, "s3://ckpt/all")
    rows = []
    env, _ = measure.run([APPROACHES[n] for n in ON_S3], tiny,
                         measure.Options(out=tmp_path, repeats=1, storage=t.path()), on_row=rows.append)
    assert sorted(r["approach"] for r in rows) == sorted(ON_S3)
    for r in rows:
        assert r["verified"] and not r["error"], (r["approach"], r["error"])
        assert r["storage"] == "s3://ckpt/all" and r["path"].startswith("s3://ckpt/all/")
        assert r["n_files"] >= 3 and r["bytes_on_disk"] > 0
        assert r["requests_save"]["write"] >= 3
        if APPROACHES[r["approach"]].own_s3_client:  # its own client's requests cannot be counted: none shown
            assert r["requests_load"] is None
        else:
            assert r["requests_load"]["read"] >= 2
        assert r["load_cold"] is True  # the server's files were evicted before every load
    by = {r["approach"]: r for r in rows}
    # one object per chunk for plain zarr (plus .zarray per tensor, manifest, marker)
    chunks = sum(APPROACHES["tensorstore"].chunking(sp)[0] for sp in tiny.specs)
    assert by["tensorstore"]["n_files"] == chunks + len(tiny.specs) + 2
    assert by["tensorstore"]["requests_save"]["write"] >= chunks
    # OCDBT in one transaction packs everything into a handful of objects
    assert by["ts+best"]["n_files"] < 10 < by["ts+ocdbt"]["n_files"]
    assert env["reference_kind"] == "s3 object" and env["reference_write_Bps"] > 0
    # nothing left behind without --keep
    assert not Target.parse("s3://ckpt/all", server.endpoint).path().list()


def test_dcp_can_target_s3_through_s3fs():
    assert "dcp" in ON_S3 and not APPROACHES["dcp-sharded"].s3_unsupported


def test_the_runai_streamer_reads_s3_with_its_own_client_without_the_environment(server, tiny, tmp_path, monkeypatch):
    # no endpoint or credentials in the environment: the streamer gets them from the target
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(k, raising=False)
    loc = target(server, "s3://ckpt/runai").path("c")
    a = APPROACHES["runai-streamer"]
    sd = tiny.materialize()
    exp = expected_digests(sd, {a.stored_dtype})[a.stored_dtype]
    a.save(dict(sd), loc)
    assert check(a.load(loc), exp).verified
    assert "AWS_EC2_METADATA_DISABLED" not in os.environ  # set only while it streams
    loc.remove()


def test_the_runai_streamer_is_warmed_up_on_s3_before_any_timing(server, tiny, tmp_path, monkeypatch):
    from llama_ckpt.formats.runai_streamer import RunaiStreamer

    warmed = []
    real = RunaiStreamer.warm_up
    monkeypatch.setattr(RunaiStreamer, "warm_up", lambda self, loc: warmed.append(str(loc)) or real(self, loc))
    t = target(server, "s3://ckpt/warm")
    env, rows = measure.run([APPROACHES["runai-streamer"]], tiny,
                            measure.Options(out=tmp_path, repeats=1, storage=t.path(), disk_reference=False))
    assert rows[0]["verified"] and len(warmed) == 1 and "warm-up-runai-streamer" in warmed[0]
    assert not Target.parse("s3://ckpt/warm", server.endpoint).path().list()  # the scratch went too


def test_cli_run_on_s3_skips_what_cannot_target_it_with_the_reason(server, tmp_path, monkeypatch):
    # a format that declares it cannot target S3 is skipped with its reason
    monkeypatch.setattr(type(APPROACHES["safetensors"]), "s3_unsupported", "it only writes local paths")
    r = cli_here("run", "--approach", "pytorch,ts+chunks,safetensors", "--model", "tiny", "--repeats", "1",
                 "--out", str(tmp_path), "--storage", "s3://ckpt/cli", "--s3-endpoint", server.endpoint)
    assert r.returncode == 0, r.stderr
    assert "skipped safetensors: it cannot target S3 (it only writes local paths)" in r.stdout
    assert r.stdout.count(" verified") == 2 and "objects" in r.stdout and "requests" in r.stdout
    rows = [json.loads(l) for l in next((tmp_path / "results").glob("*.jsonl")).read_text().splitlines()]
    assert rows[0]["skipped"] == {"safetensors": "it only writes local paths"}


def test_dcp_on_s3_counts_s3fs_requests_and_objects(server, tiny, tmp_path):
    t = target(server, "s3://ckpt/dcp")
    rows = []
    measure.run([APPROACHES["dcp"]], tiny, measure.Options(out=tmp_path, repeats=1, storage=t.path(), keep=True),
                on_row=rows.append)
    (r,) = rows
    assert r["verified"], r["error"]
    objs = Target.parse("s3://ckpt/dcp", server.endpoint).path(r["run_id"], "dcp").list()
    names_ = {o["Key"].rsplit("/", 1)[-1] for o in objs}
    assert ".metadata" in names_ and any(n.endswith(".distcp") for n in names_) and COMMIT in names_
    assert r["n_files"] == len(objs)
    # one PUT per .distcp file and .metadata (s3fs), plus the suite's manifest and marker (boto3)
    assert r["requests_save"]["write"] >= len(objs)
    assert r["requests_load"]["read"] >= len([n for n in names_ if n.endswith(".distcp")]) + 1
    rep = verify(Target.parse("s3://ckpt/dcp", server.endpoint).path(r["run_id"], "dcp"))
    assert rep.ok and rep.approach == "dcp"


def test_a_dead_endpoint_is_named_within_seconds(tmp_path):
    t0 = time.monotonic()
    r = cli_here("run", "--model", "tiny", "--storage", "s3://ckpt/x", "--s3-endpoint", "http://127.0.0.1:9",
            "--out", str(tmp_path))
    assert_one_line_error(r, "http://127.0.0.1:9", "not answering")
    assert time.monotonic() - t0 < 120  # a hang guard: bounded retries, not TensorStore's minutes of backoff


def test_tensorstore_against_a_dead_endpoint_fails_fast(tiny, tmp_path):
    """Past the preflight (the server died mid-run): the row is an error, not a hang."""
    dead = Target.parse("s3://ckpt/x", "http://127.0.0.1:9")
    row = measure.measure_approach(APPROACHES["ts+best"], tiny, expected_digests(tiny.materialize(), {
        APPROACHES["ts+best"].stored_dtype}), dead.path("r", "ts+best"), 1, "r", measure.Options(out=tmp_path))
    assert row["error"] and "save failed" in row["error"] and not row["verified"]


def test_a_missing_bucket_is_created(server):
    t = Target.parse("s3://fresh-bucket/p", server.endpoint)
    said = []
    check_target(t, said.append)
    assert said == [f"created bucket 'fresh-bucket' at {server.endpoint}"]
    check_target(t, said.append)  # exists now: nothing to say
    assert len(said) == 1


@pytest.mark.parametrize("bad, needle", [
    (["--storage", "s3://"], "names no bucket"),
    (["--storage", "gs://b/p", "--s3-endpoint", "http://127.0.0.1:1"], "must be s3://"),
    (["--storage", "s3://b/p"], "needs --s3-endpoint"),
    (["--storage", "s3://b/p", "--s3-endpoint", "127.0.0.1:1"], "http:// or https://"),
    (["--s3-endpoint", "http://127.0.0.1:1"], "need --storage"),
    (["--storage", "s3://b/p", "--s3-endpoint", "http://127.0.0.1:1", "--s3-delay-ms", "-5"], ">= 0"),
])
def test_bad_storage_options_are_one_line(tmp_path, bad, needle):
    assert_one_line_error(cli_here("run", "--model", "tiny", "--out", str(tmp_path), *bad), needle)


def test_an_interrupted_save_is_never_loaded_and_is_removed_next_run(server, tiny, tmp_path):
    t = target(server, "s3://ckpt/crash")
    a = APPROACHES["ts+chunks"]
    path = t.path("run0", "ts+chunks")
    a.save(tiny.materialize(), path)
    assert read_manifest(path)["approach"] == "ts+chunks"
    t.client().delete_object(Bucket="ckpt", Key=(path / COMMIT).key)  # as if killed before it
    with pytest.raises(UserError, match="incomplete checkpoint"):
        a.load(path)
    assert t.path().stale_saves() == [path]
    said = []
    measure.run([APPROACHES["pytorch"]], tiny, measure.Options(out=tmp_path, repeats=1, storage=t.path(),
                                                               disk_reference=False), say=said.append)
    assert any("removed the stale temporary" in s and str(path) in s for s in said)
    assert not path.list()


def test_a_failed_save_leaves_nothing(server, tiny):
    t = target(server, "s3://ckpt/fail")
    path = t.path("r", "tensorstore")
    sd = tiny.materialize()
    sd["model.norm.weight"] = object()  # not a tensor: the save fails part way
    with pytest.raises(AttributeError):  # the object has no tensor's attributes
        APPROACHES["tensorstore"].save(sd, path)
    assert not path.list()


def test_a_flipped_byte_on_s3_is_caught_by_the_digests(server, tiny):
    t = target(server, "s3://ckpt/flip")
    a = APPROACHES["ts+chunks"]
    path = t.path("r", "ts+chunks")
    a.save(tiny.materialize(), path)
    c = t.client()
    key = next(o["Key"] for o in path.list() if o["Key"].endswith("/0.0") and "embed_tokens" in o["Key"])
    data = bytearray(c.get_object(Bucket="ckpt", Key=key)["Body"].read())
    data[100] ^= 0xFF
    c.put_object(Bucket="ckpt", Key=key, Body=bytes(data))
    r = verify(path)
    assert not r.ok and any("embed_tokens" in b for b in r.bad)


def test_the_delay_proxy_adds_the_round_trip_and_keeps_the_data(server):
    with delayed(server.endpoint, 30) as ep:
        assert ep != server.endpoint
        assert measure_rtt(ep) >= 0.030  # each request/response waits 15 ms each way, at least
        p = Target.parse("s3://ckpt/proxy", ep).path()
        data = bytes(range(256)) * 40_000  # 10 MB through the proxy and back
        p.write_bytes("blob", data)
        assert p.read_bytes("blob") == data


def test_make_s3_up_and_down_and_nothing_is_left_in_tmp(tmp_path):
    d = tmp_path / "srv"
    up = subprocess.run([sys.executable, "-m", "llama_ckpt.store.server", "up", str(d)], capture_output=True, text=True,
                        timeout=180)
    assert up.returncode == 0, up.stderr
    endpoint = up.stdout.split("endpoint: ")[1].split()[0]
    ports = {int(Path(g).stem.rsplit("-", 1)[1]) for g in s3_server.running_server(d).grpc_sockets}
    assert len(ports) == 4
    assert s3_server.local_server_dir(endpoint, [tmp_path]) == str(d.resolve())
    again = subprocess.run([sys.executable, "-m", "llama_ckpt.store.server", "up", str(d)], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "already runs" in again.stderr
    down = subprocess.run([sys.executable, "-m", "llama_ckpt.store.server", "down", str(d)], capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert s3_server.running_server(d) is None
    # logs and sockets lived under the data directory; the gRPC sockets weed
    # puts in /tmp (named by this server's ports) went with it
    assert any((d / "logs").iterdir())
    assert not [p for p in Path(tempfile.gettempdir()).glob("seaweedfs-*-grpc-*.sock")
                if int(p.stem.rsplit("-", 1)[1]) in ports]


def test_sharded_save_on_two_ranks_and_load_on_three_from_s3(server, tmp_path):
    r = cli("run", "--approach", "all", "--world-size", "2", "--load-world-size", "3", "--model", "tiny",
            "--repeats", "1", "--out", str(tmp_path), "--storage", "s3://ckpt/sharded",
            "--s3-endpoint", server.endpoint)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sharded = names(sharded=True)
    for n in sharded:
        assert (f"skipped {n}: it cannot target S3" in r.stdout) == bool(APPROACHES[n].s3_unsupported)
    rows = [json.loads(l) for l in next((tmp_path / "results").glob("*.jsonl")).read_text().splitlines()]
    rows = [x for x in rows if x["record"] == "measurement"]
    assert sorted(x["approach"] for x in rows) == sorted(n for n in sharded if not APPROACHES[n].s3_unsupported)
    assert all(x["verified"] and x["storage"] == "s3://ckpt/sharded" and x["n_files"] > 0 for x in rows)
