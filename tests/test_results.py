"""The result schema round-trips, and compare computes changes correctly from
a hand-made results file."""

import json

import pytest

from llama_ckpt.errors import UserError
from llama_ckpt.results import (MEASUREMENT_FIELDS, ResultsWriter, change, comparison_table, measurement_row,
                                read_results, summarize)


def row(approach, repeat, save, load, size, dtype="float32", **kw):
    base = dict(run_id="r1", approach=approach, model="tiny", n_tensors=21, tensor_set="abc", stored_dtype=dtype,
                repeat=repeat, save_s=save, load_s=load, load_cold=True, bytes_on_disk=size, bytes_apparent=size,
                n_files=10, verified=True, max_abs_err=0.0)
    base.update(kw)
    return measurement_row(**base)


def test_schema_round_trips_through_jsonl(tmp_path):
    w = ResultsWriter(tmp_path / "r.jsonl")
    r = row("tensorstore", 1, 2.0, 1.0, 100, knobs={"chunk_size": 64})
    w.write({"record": "environment", "run_id": "r1", "torch": "2.13.0"})
    w.write(r)
    loaded = read_results([tmp_path / "r.jsonl"])
    assert loaded.measurements == [r] and loaded.environments[0]["torch"] == "2.13.0"
    assert tuple(loaded.measurements[0]) == MEASUREMENT_FIELDS


def test_unknown_field_is_refused():
    with pytest.raises(KeyError):
        measurement_row(approach="x", speed=1)


def test_corrupt_line_is_named_and_the_rest_used(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(row("a", 1, 1, 1, 1)) + "\n{not json\n" + json.dumps(row("a", 2, 1, 1, 1)) + "\n")
    loaded = read_results([p])
    assert len(loaded.measurements) == 2
    assert loaded.warnings and f"{p}:2:" in loaded.warnings[0]


def test_change_in_percent():
    assert change(5.0, 10.0) == -50.0
    assert change(15.0, 10.0) == 50.0
    assert change(1.0, None) is None and change(1.0, 0) is None


HAND_MADE = [
    # tensorstore: saves 10, 12, 11 -> median 11; loads 4, 5, 6 -> 5; size 600
    row("tensorstore", 1, 10.0, 4.0, 600), row("tensorstore", 2, 12.0, 5.0, 600), row("tensorstore", 3, 11.0, 6.0, 600),
    # ts+chunks: median save 2.2 (-80%), load 2.5 (-50%), size 660 (+10%)
    row("ts+chunks", 1, 2.2, 2.5, 660), row("ts+chunks", 2, 2.0, 2.0, 660), row("ts+chunks", 3, 3.0, 3.0, 660),
    # pytorch float16: median save 1.1 (-90%), load 1.0 (-80%), size 300 (-50%)
    row("pytorch", 1, 1.1, 1.0, 300, dtype="float16"),
    # an invalid row must not count
    row("ts+chunks", 4, 0.001, 0.001, 660, verified=False, error="verification failed: x"),
]


def test_summarize_takes_medians_of_valid_rows_only():
    s = summarize(HAND_MADE)
    assert s["tensorstore"]["save_s"].median == 11.0 and s["tensorstore"]["load_s"].median == 5.0
    assert (s["ts+chunks"]["save_s"].lo, s["ts+chunks"]["save_s"].hi, s["ts+chunks"]["n"]) == (2.0, 3.0, 3)


def test_compare_computes_the_changes(tmp_path):
    p = tmp_path / "r.jsonl"
    w = ResultsWriter(p)
    for r in HAND_MADE:
        w.write(r)
    table = comparison_table(read_results([p]).measurements)
    lines = {l.split()[0]: l for l in table.splitlines()
             if l and l.split()[0] in ("tensorstore", "ts+chunks", "pytorch")}
    assert "-80%" in lines["ts+chunks"] and "-50%" in lines["ts+chunks"] and "+10%" in lines["ts+chunks"]
    assert "-90%*" in lines["pytorch"] and "-80%*" in lines["pytorch"] and "-50%*" in lines["pytorch"]
    assert "float16" in lines["pytorch"]
    assert "not like for like" in table
    assert "not counted: ts+chunks repeat 4" in table
    # against pytorch: ts+chunks saves 2.2 vs 1.1 -> +100%
    assert "+100%*" in lines["ts+chunks"]


def test_compare_refuses_different_tensor_sets():
    rows = [row("tensorstore", 1, 1, 1, 1), row("pytorch", 1, 1, 1, 1, tensor_set="other", n_tensors=20)]
    with pytest.raises(UserError, match="different tensor sets"):
        comparison_table(rows)


def test_a_numeric_sweep_is_ordered_by_its_knob_not_by_when_it_was_measured():
    from llama_ckpt.report import charts, tables
    # 4a's sweep points measured once come in the run's last round, after the pair (1 and 128)
    conc = [row(a, i, 60.0 / c, 3.0, 600, knobs={"concurrency": c, "chunk_size": 64, "chunk_rule": "per_dim"})
            for i, (a, c) in enumerate([("tensorstore", 1), ("ts+concurrency", 128), ("ts[c=4]", 4),
                                        ("ts[c=16]", 16), ("ts[c=64]", 64)])]
    conc.append(row("pytorch", 1, 1.0, 1.0, 300, knobs={"dtype": "float16"}))  # no such knob: after the sweep
    conc.append(row("broken", 1, 1.0, 1.0, 300, knobs={"concurrency": 2}, verified=False, error="x"))
    assert tables.order(conc) == ["tensorstore", "ts+concurrency", "ts[c=4]", "ts[c=16]", "ts[c=64]", "pytorch",
                                  "broken"]
    assert tables.order(conc, "concurrency") == ["tensorstore", "broken", "ts[c=4]", "ts[c=16]", "ts[c=64]",
                                                 "ts+concurrency", "pytorch"]
    # the table: every valid approach once, in the axis's order (an approach with no valid row has no line)
    assert list(tables.table(conc, axis="concurrency")["concurrency"]) == ["1", "4", "16", "64", "128", "none"]
    # 4b: chunks of 64 per dimension are 16 KiB in float32, 8 KiB in float16 and 256 KiB at 256 per dimension;
    # whole tensors come last whatever their byte budget
    chunks = [row(a, 1, 1.0, 1.0, 600, knobs=k) for a, k in [
        ("whole", {"chunk_size": 1, "chunk_rule": "whole"}),
        ("tensorstore", {"chunk_size": 64, "chunk_rule": "per_dim"}), ("ts+chunks", {"chunk_size": 1 << 20}),
        ("c256", {"chunk_size": 256, "chunk_rule": "per_dim"}), ("c64k", {"chunk_size": 64 << 10}),
        ("f16", {"chunk_size": 64, "chunk_rule": "per_dim", "dtype": "float16"}), ("c64m", {"chunk_size": 64 << 20})]]
    assert tables.order(chunks, "chunk_size") == ["f16", "tensorstore", "c64k", "c256", "ts+chunks", "c64m", "whole"]
    # the sweep chart places them the same way, whole tensors at 4x the largest chunk
    df, kind = charts._sweep_frame(chunks, "chunk_size", tables.labels(chunks, "chunk_size"))
    assert kind == "bytes" and dict(zip(df["approach"], df["x"])) == {
        "f16": 8192, "tensorstore": 16384, "c64k": 65536, "c256": 262144, "ts+chunks": 1 << 20, "c64m": 64 << 20,
        "whole": 4 * (64 << 20)}
    # an axis that is not numeric keeps the order of measurement
    assert tables.order(chunks, "compression") == tables.order(chunks)


def test_the_sweep_sentence_says_which_points_were_measured_fewer_times():
    from llama_ckpt.report import tables
    from llama_ckpt.study.phases import get_phase
    k = lambda c: {"concurrency": c}
    rows = [row("tensorstore", i, 50.0 + i, 3.0, 600, knobs=k(1)) for i in range(3)]
    rows += [row("ts+concurrency", i, 30.0 + i, 4.0, 600, knobs=k(128)) for i in range(7)]  # 08 added repeats
    rows += [row("tensorstore[concurrency=4]", 1, 20.0, 5.0, 600, knobs=k(4))]
    rows += [row("tensorstore[concurrency=16]", 1, 25.0, 3.5, 600, knobs=k(16))]
    fewer = set(get_phase("4a").fewer(2))
    assert "tensorstore[concurrency=4]" in fewer and "ts+concurrency" not in fewer
    assert get_phase("4a").fewer(1) == {}  # the run's repeats are no more than the sweep's
    only = [a for a in get_phase("4a").approaches() if a.name in ("tensorstore", "tensorstore[concurrency=16]")]
    assert get_phase("4a").fewer(3, only) == {"tensorstore[concurrency=16]": 1}
    s = tables.sweep_sentence(rows, "concurrency", fewer)
    assert "save: best at concurrency = 4 (20 s, 1 repeat), worst at 1 (51 s)" in s, s
    assert "cold load: best at concurrency = 1 (3 s), worst at 4 (5 s, 1 repeat)" in s, s
    assert "size: the same at every concurrency (600 B)" in s, s
    # without the phase's say, or where every point had one repeat, no point is singled out
    assert "repeat" not in tables.sweep_sentence(rows, "concurrency")
    assert "repeat" not in tables.sweep_sentence([r for r in rows if r["repeat"] == 1], "concurrency", fewer)


def test_a_comparison_says_when_its_sides_rest_on_different_repeats():
    from llama_ckpt.report import tables
    from llama_ckpt.results import summarize
    rows = [row("ts+best", i, 1.0 + i / 10, 1.0, 600) for i in range(3)] + [row("ts+best[x=1]", 1, 0.5, 0.5, 600)]
    summ = summarize(rows)
    assert tables.versus(summ, "ts+best[x=1]", "ts+best").endswith("; repeats 1 vs 3.")
    assert tables.versus(summ, "ts+best", "ts+best").endswith("files 10 vs 10.")
    found = tables.io_findings(rows, (("ts+best[x=1]", "ts+best"),))
    assert "ts+best[x=1] beat ts+best by" in found and "ts+best[x=1] was measured once." in found, found


def _profile(reference=None, **rates):
    from llama_ckpt.results import MachineProfile, Rate

    base = dict(durable_fresh_Bps=500e6, durable_freed_Bps=1000e6, buffered_write_Bps=2000e6, fresh_memory_Bps=2000e6,
                small_files_per_s=1000.0)
    base.update(rates)
    return MachineProfile(cores=2, **{k: Rate.of([v] * 3) for k, v in base.items()},
                          codecs_Bps={"gzip:9": Rate.of([30e6] * 3), "zstd": Rate.of([400e6] * 3)},
                          reference=reference or {"reference_write_Bps": 800e6, "reference_read_Bps": 1000e6})


def _work_row(approach="a", save_s=2.0, load_s=1.0, **work):
    w = dict(user_s=0.1, sys_s=0.1, read_calls=10, read_bytes=0, write_calls=10, write_bytes=1e9, minor_faults=0,
             major_faults=0, storage_read_bytes=1e9, storage_write_bytes=1e9)
    w.update(work)
    return {"approach": approach, "save_s": save_s, "load_s": load_s, "verified": True, "n_files": 3,
            "payload_bytes": 1e9, "knobs": {}, "cpu_io_save": w, "cpu_io_load": w}


def test_a_bound_is_the_slowest_limit_at_the_profiles_rates():
    from llama_ckpt.results import bounds

    prof = _profile()
    lim = bounds.limits(_work_row(), "save", prof)
    # 1 GB to storage at the best durable rate the profile saw (1000 MB/s freed), 1 GB of write calls at
    # 2000 MB/s x 2 cores, 3 files at 1000/s, 0.2 CPU seconds over 2 cores
    assert lim == pytest.approx({"disk write": 1.0, "page-cache copy": 0.25, "files": 0.003, "fresh memory": 0.0,
                                 "CPU": 0.1})
    assert bounds.bound(_work_row(), "save", prof) == (pytest.approx(1.0), "disk write")
    # a save that writes in one stream copies into the page cache on one thread: 1 GB at 2000 MB/s
    assert bounds.limits(dict(_work_row(), write_streams=1), "save", prof)["page-cache copy"] == pytest.approx(0.5)
    assert bounds.limits(dict(_work_row(), write_streams=8), "save", prof)["page-cache copy"] == pytest.approx(0.25)
    assert bounds.bound(_work_row(), "load", prof) == (pytest.approx(1.0), "disk read")
    cpu = _work_row(user_s=5.0)
    assert bounds.bound(cpu, "save", prof) == (pytest.approx(2.55), "CPU")
    gz = dict(_work_row(), knobs={"compression": "gzip:9"})
    assert bounds.limits(gz, "save", prof)["compression"] == pytest.approx(1e9 / 60e6)
    assert bounds.bound(gz, "save", prof)[1] == "compression"
    assert "compression" not in bounds.limits(dict(gz, knobs={"compression": "gzip"}), "save", prof)  # not profiled
    assert bounds.limits(_work_row(), "save", {}) == {} and bounds.bound({"save_s": 1.0}, "save", prof) == (None, None)
    old = _work_row()  # written before the suite counted page faults and storage bytes: no bound
    del old["cpu_io_save"]["minor_faults"]
    assert bounds.limits(old, "save", prof) == {}


def test_the_disk_read_limit_takes_the_fastest_cold_read_the_reference_saw():
    from llama_ckpt.results import bounds

    prof = _profile()
    assert bounds.best_read(prof) == 1000e6  # no samples kept: the median way's rate
    prof.reference.update(reference_bytes=1e9, reference_samples=[
        {"read_stream_s": 1.0, "read_parallel_s": 0.8}, {"read_stream_s": 0.5, "read_parallel_s": 0.9},
        {"read_stream_s": 0.1, "read_parallel_s": 0.1, "read_cold": False}])  # from the page cache: not the disk
    assert bounds.best_read(prof) == pytest.approx(2e9)
    assert bounds.limits(_work_row(), "load", prof)["disk read"] == pytest.approx(0.5)


def test_the_bounds_table_gives_each_approach_its_bound_binding_limit_and_share():
    from llama_ckpt.report.machine import bounds_table

    rows = [_work_row("a", save_s=s) for s in (2.0, 3.0, 4.0)] + [_work_row("b", save_s=0.5, user_s=0.9, sys_s=0.1)]
    t = bounds_table(rows, _profile(), ["b", "a"])
    assert list(t.index) == ["b", "a"]
    assert (t.loc["a", "save_bound_s"], t.loc["a", "save_binding"], t.loc["a", "save_x_bound"]) == (
        pytest.approx(1.0), "disk write", pytest.approx(3.0))
    assert t.loc["b", "save_x_bound"] == pytest.approx(0.5)  # faster than a 1 GB write can be: the bound says so
    assert "save_predicted_s" not in t  # a row's own work predicts nothing of another: results.work does
    assert bounds_table(rows, None).empty


def test_the_bounds_findings_name_the_limit_that_binds_the_fastest_and_who_is_far_from_its_bound():
    from llama_ckpt.report.machine import bounds_findings

    rows = [_work_row("a", save_s=1.2, load_s=1.1)] + [_work_row("slow", save_s=4.0, load_s=1.5)]
    text = bounds_findings(rows, _profile())
    assert "**save**: the fastest here, `a` (1.2 s), is bound by **disk write** (1 s; it takes 1.20x that)" in text
    assert "`slow` 4.0x" in text and "disk write 2" in text
    assert bounds_findings(rows, None).startswith("No bounds")


def test_a_ranking_says_whether_the_rule_tells_each_approach_from_the_next():
    import numpy as np

    from llama_ckpt.report.tables import vs_next as _vs_next

    s = {"fast": {"save_s": np.array([1.0, 1.01, 0.99, 1.0, 1.02])},
         "slow": {"save_s": np.array([2.0, 2.1, 1.9, 2, 2])},
         "close": {"save_s": np.array([1.0, 1.2, 0.8, 1.1, 0.9])}, "few": {"save_s": np.array([1.0, 1.01, 0.99])},
         "small": {"bytes_on_disk": np.array([100.0] * 3)}, "big": {"bytes_on_disk": np.array([2100.0] * 3)}}
    assert _vs_next(s, "fast", "slow", "save_s").endswith(": told apart")
    assert _vs_next(s, "fast", "close", "save_s").endswith(": not told apart")
    assert _vs_next(s, "few", "slow", "save_s").endswith("apart, but on fewer than 5 repeats")
    assert _vs_next(s, "small", "big", "bytes_on_disk") == "smaller by 2.00 kB" and _vs_next(s, "fast", None, "") == ""
    # a few bytes of metadata that vary by repeat: still the medians' difference, not a resampled ratio of 1.00x
    s["tiny"] = {"bytes_on_disk": np.array([2098.0, 2099.0, 2101.0])}
    assert _vs_next(s, "tiny", "big", "bytes_on_disk") == "smaller by 1 B"


def test_byte_sizes_have_one_label_and_an_approach_name_keeps_its_spelling():
    from llama_ckpt.registry import variant
    from llama_ckpt.report import charts, tables
    from llama_ckpt.units import KiB, MiB, binary_label

    # the largest binary unit that divides exactly, so a label reads back as the same bytes
    assert [binary_label(n) for n in (16 * MiB, 64 * KiB, 1536 * KiB, 1000)] == ["16 MiB", "64 KiB", "1536 KiB",
                                                                                   "1000 B"]
    # in an approach's name (an id in result rows and tests) without the space
    assert variant("ts+chunks", chunk_size=16 * MiB).name == "ts+chunks[chunk_size=16MiB]"
    assert variant("ts+chunks", chunk_size=64 * KiB).name == "ts+chunks[chunk_size=64KiB]"
    # a table's label and a chart's tick say the same
    assert tables.knob_label({"chunk_size": MiB, "chunk_rule": "contiguous"}, "chunk_size") == "1 MiB"
    rows = [row("a", 1, 1.0, 1.0, 600, knobs={"chunk_size": MiB, "chunk_rule": "contiguous"})]
    df, _ = charts._sweep_frame(rows, "chunk_size", tables.labels(rows, "chunk_size"))
    assert charts._tick(float(MiB), "bytes", df) == "1 MiB"
