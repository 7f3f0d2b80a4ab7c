"""TensorStore's I/O knobs, 4f's sweep, the disk reference's best, the memory
peaks' parts and the up-front memory skip."""

import mmap
import os
import time

import pytest
import tensorstore

from llama_ckpt import fsutil
from llama_ckpt.bench import measure
from llama_ckpt.checkpoint import COMMIT
from llama_ckpt.bench.probes import REFERENCE_THREADS, reference
from llama_ckpt.digests import check, expected_digests
from llama_ckpt.errors import UserError
from llama_ckpt.formats.safetensors import SafeTensors
from llama_ckpt.recorders import PeakRSS, Steps
from llama_ckpt.registry import APPROACHES, variant
from llama_ckpt.report import tables
from llama_ckpt.results import reference_line
from llama_ckpt.store import LocalDir
from llama_ckpt.study.phases import IO_BASES, IO_POINTS, PHASES, sweep_approaches


SWEEP = [(b, APPROACHES[b]) for b in IO_BASES] + [(b, a) for b, k, vs in IO_POINTS
                                                  for a in sweep_approaches(((b, k, vs),))]


@pytest.mark.parametrize("base, point", SWEEP, ids=lambda x: getattr(x, "name", x))
def test_every_point_of_the_io_sweep_round_trips(tiny_sd, tmp_path, base, point):
    exp = expected_digests(tiny_sd, {point.stored_dtype})[point.stored_dtype]
    point.save(dict(tiny_sd), tmp_path / "c")
    assert check(point.load(tmp_path / "c"), exp).verified
    assert point.name == base or point.name.startswith(base + "[")


def test_the_sweep_compares_each_point_with_its_base():
    phase = PHASES["4f"]
    names = [a.name for a in phase.approaches()]
    assert len(names) == len(set(names)) > 10
    assert all(b in names and a in names for a, b in phase.pairs)
    assert {b for _a, b in phase.pairs} == {"ts+best", "runai-streamer", "fastsafetensors", "tensorizer"}


def test_without_file_sync_the_save_fsyncs_every_file_before_it_returns(tiny_sd, tmp_path, monkeypatch):
    synced = []
    real = fsutil.fsync_tree
    monkeypatch.setattr(fsutil, "fsync_tree", lambda p: synced.append(p) or real(p))
    for knobs, passes in ((dict(file_io_sync=False), 1), ({}, 0)):
        synced.clear()
        steps = Steps()
        variant("ts+best", **knobs).save(dict(tiny_sd), tmp_path / f"c{passes}", steps=steps)
        assert len(synced) == passes
        assert ("fsync pass (every file, then the directories)" in steps.seconds) == bool(passes)
        if passes:  # the staging directory, before the commit marker exists
            assert ".tmp-" in synced[0].name and not (synced[0] / COMMIT).exists()
    # the pass covers the staging directory the files were written to, before the commit renamed it
    assert fsutil.fsync_tree(tmp_path / "c1") >= len(list(fsutil.iter_files(tmp_path / "c1"))) + 1


def test_commit_bytes_commits_in_batches(tiny_sd, tmp_path, monkeypatch):
    commits = []
    real = tensorstore.Transaction

    class Counting:
        def __init__(self):
            self.txn = real()

        def commit_async(self):
            commits.append(1)
            return self.txn.commit_async()

    monkeypatch.setattr(tensorstore, "Transaction", Counting)
    # ts.open(transaction=...) needs the real object: hand it over
    opened = tensorstore.open
    monkeypatch.setattr(tensorstore, "open", lambda *a, transaction=None, **k: opened(
        *a, **k, **({"transaction": transaction.txn} if transaction is not None else {})))
    total = sum(t.numel() * t.element_size() for t in tiny_sd.values())
    variant("ts+best", commit_bytes=max(1, total // 4)).save(dict(tiny_sd), tmp_path / "c")
    assert 3 <= len(commits) <= 5
    commits.clear()
    APPROACHES["ts+best"].save(dict(tiny_sd), tmp_path / "d")
    assert len(commits) == 1


@pytest.mark.parametrize("knobs, words", [
    (dict(file_io_locking="sometimes"), "file_io_locking"), (dict(file_io_mode="fast"), "file_io_mode"),
    (dict(target_data_file_size=-1), ">= 0"),
    (dict(transaction=False, commit_bytes=1 << 20), "transaction"), (dict(data_copy_concurrency=-1), ">= 0"),
])
def test_bad_io_knobs_are_one_clear_error(knobs, words):
    with pytest.raises(UserError, match=words):
        variant("ts+best", **knobs)


def test_the_disk_reference_is_the_faster_way_of_each(tmp_path):
    ref = reference(32 << 20, LocalDir(tmp_path / "ref"), samples=2)
    ways = ref["reference_ways"]
    assert set(ways) == {"write_stream_s", "write_parallel_s", "read_stream_s", "read_parallel_s", "read_mapped_s"}
    assert ref["reference_write_s"] == min(ways["write_stream_s"], ways["write_parallel_s"])
    assert ref["reference_read_s"] == min(ways["read_stream_s"], ways["read_parallel_s"], ways["read_mapped_s"])
    assert ref["reference_read_way"] in ("one stream", f"{REFERENCE_THREADS} threads", "mapped")
    assert all(s["read_mapped_s"] > 0 for s in ref["reference_samples"])
    line = reference_line(ref | {"reference_kind": "disk"})
    assert line.startswith("disk reference: write ") and "its 2 samples: write stream " in line
    assert not (tmp_path / "ref").exists() or not any((tmp_path / "ref").iterdir())


def test_peak_rss_splits_anonymous_memory_from_mapped_file_pages(tmp_path):
    import torch

    f = tmp_path / "blob"
    f.write_bytes(os.urandom(1 << 20) * 96)  # 96 MiB
    with PeakRSS() as mapped:
        with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as m:
            for off in range(0, len(m), 4096):
                m[off]
            time.sleep(0.05)  # the parts are sampled every 5 ms: a peak held for less may be missed
    with PeakRSS() as allocated:
        x = torch.ones(24 << 20)  # 96 MiB
        x.add_(1)
        time.sleep(0.05)
        del x
    assert mapped.peak_file - allocated.peak_file > 80e6
    assert allocated.peak_anon - mapped.peak_anon > 80e6
    assert mapped.peak >= mapped.peak_file and allocated.peak >= allocated.peak_anon


class _Greedy(SafeTensors):
    MECHANISM = "test-greedy"
    PEAK_FACTOR = 1e6  # says it needs a million copies of the model


def test_an_approach_whose_peak_cannot_fit_is_skipped_up_front_with_the_reason(tiny, tmp_path):
    greedy = _Greedy("greedy", "needs far too much memory", SafeTensors.Knobs())
    say = []
    env, rows = measure.run([greedy, APPROACHES["safetensors"]], tiny, measure.Options(out=tmp_path, repeats=1,
                            disk_reference=False), say=say.append)
    assert [r["approach"] for r in rows] == ["safetensors"] and rows[0]["verified"]
    assert "exceeds" in env["skipped"]["greedy"] and "GB" in env["skipped"]["greedy"]
    assert any(line.startswith("skipped greedy: its estimated peak memory") for line in say)
    with pytest.raises(UserError, match="none of the chosen approaches fits in this machine's memory"):
        measure.run([greedy], tiny, measure.Options(out=tmp_path / "2", repeats=1, disk_reference=False))


def _row(approach, save, load, repeat=1):
    return {"record": "measurement", "approach": approach, "run_id": "r", "model": "tiny", "n_tensors": 3,
            "n_params": 10, "repeat": repeat, "save_s": save, "load_s": load, "verified": True, "error": None,
            "stored_dtype": "float32", "bytes_on_disk": 100, "bytes_apparent": 100, "n_files": 1}


def test_the_io_findings_say_when_a_point_beats_ts_best_and_whether_it_is_clear():
    pairs = (("ts+best[x=1]", "ts+best"), ("ts+best[x=2]", "ts+best"))
    rows = [_row("ts+best", 1.0 + k / 100, 1.0, k) for k in range(5)]
    rows += [_row("ts+best[x=1]", 0.5 + k / 100, 0.5, k) for k in range(5)]  # clearly faster
    rows += [_row("ts+best[x=2]", 2.0, 2.0, k) for k in range(5)]
    text = tables.io_findings(rows, pairs)
    assert "In this run ts+best[x=1] beat ts+best by 50% on the round trip." in text
    rows = [r for r in rows if r["approach"] != "ts+best[x=1]"]
    assert "ts+best is the fastest round trip of this sweep." in tables.io_findings(rows, pairs)
    t = tables.io_table(rows, pairs)
    assert list(t.index.get_level_values("knob")) == ["(base)", "x=2"]
    assert t.loc[("ts+best", "x=2"), "save_vs_base_x"] == pytest.approx(2.0 / 1.02)


def test_the_system_call_counts_leave_out_the_memory_samplers_own_reads():
    from llama_ckpt.recorders import CpuIO

    with PeakRSS() as rss, CpuIO(rss) as cpu:
        time.sleep(0.3)
    assert rss.reads >= 20  # it sampled all along, one read each
    assert cpu.result["read_calls"] <= 4  # /proc/self/io itself, not the sampler's reads
    with PeakRSS() as rss, CpuIO() as cpu:  # without the sampler named, they would be counted
        time.sleep(0.3)
    # most of them: the sampler also reads while CpuIO reads its own counters (smaps_rollup) outside its window
    assert cpu.result["read_calls"] >= rss.reads // 2


def test_io_findings_name_a_base_without_valid_rows_instead_of_failing():
    pairs = (("ts+best[x=1]", "ts+best"),)
    rows = [_row("ts+best[x=1]", 0.5, 0.5, k) for k in range(3)]
    assert "- **ts+best**: no valid row of the base itself" in tables.io_findings(rows, pairs)


def test_the_reference_reads_fill_reused_buffers_not_fresh_memory(tmp_path, monkeypatch):
    """The disk's read rate, not malloc's: 128 MiB read in 16 MiB pieces by 2 threads into buffers made before
    the timer faults in next to nothing, where a read allocating each piece, under the suite's fixed mmap
    threshold, faults in all 32,768 pages (docs/decisions.md#reference-read)."""
    from llama_ckpt.bench import probes
    from llama_ckpt.recorders import CpuIO, fix_mmap_threshold

    fix_mmap_threshold()  # as the suite runs: a freed 16 MiB buffer goes back to the kernel
    monkeypatch.setattr(probes, "REFERENCE_THREADS", 2)
    path = tmp_path / probes.REFERENCE_FILE
    path.write_bytes(os.urandom(1 << 20) * 128)
    reads = {"parallel": lambda b: probes._read_parallel(str(path), 128 << 20, b),
             "mapped": lambda b: probes._read_mapped(str(path)),
             "stream": lambda b: probes._read_stream(LocalDir(tmp_path), b)}
    for way, read in reads.items():
        bufs = probes._buffers(128 << 20, 2)
        with CpuIO() as w:
            read(bufs)
        # the mapping's faults map cached file pages, several per fault; no read makes a 4 KiB fresh page each
        assert w.result["minor_faults"] < 1024, (way, w.result)
        assert bufs.qsize() == 2  # every buffer given back
