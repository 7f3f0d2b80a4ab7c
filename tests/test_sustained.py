"""Checkpoints saved back to back (measure's sustained mode): recorded, every
one verified, none left behind; the report's table against the isolated saves."""


import pytest

from llama_ckpt import fsutil
from llama_ckpt.bench import measure
from llama_ckpt.model import get_model
from llama_ckpt.registry import resolve
from llama_ckpt.results import read_results


def test_back_to_back_saves_are_recorded_verified_and_removed(tmp_path):
    opts = measure.Options(out=tmp_path, repeats=1, disk_reference=False, sustained=("safetensors",),
                           sustained_saves=3, keep=True)  # kept: the run's directory stays, so a leak would show
    env, rows = measure.run(resolve("safetensors,pytorch"), get_model("tiny"), opts)
    assert env["sustained"] == ["safetensors"] and env["sustained_saves"] == 3
    loaded = read_results([env["results_path"]])
    assert not loaded.warnings and len(loaded.measurements) == 2
    (rec,) = loaded.sustained
    assert rec["approach"] == "safetensors" and rec["verified"] and rec["error"] is None
    assert len(rec["saves_s"]) == rec["n_saves"] == 3 and all(x > 0 for x in rec["saves_s"])
    assert len(rec["loads_s"]) == 3 and all(x > 0 for x in rec["loads_s"])  # MLPerf's reads, after the saves
    # confirmed cold; on a tmp_path in memory there is nothing to evict and nothing can tell
    assert rec["loads_cold"] is (None if fsutil.in_memory(tmp_path) else True)
    assert rec["bytes_on_disk"] > 0
    assert list((tmp_path / "checkpoints").glob("*/safetensors"))  # the rounds' kept checkpoint
    assert not list((tmp_path / "checkpoints").glob("**/*in-a-row*"))


def test_a_back_to_back_checkpoint_that_does_not_verify_fails_the_record(tmp_path, monkeypatch):
    from llama_ckpt.formats.safetensors import SafeTensors as SafetensorsFormat

    real = SafetensorsFormat.load

    def off_by_one(self, where, progress=None):  # the second checkpoint comes back wrong
        sd = real(self, where, progress)
        if str(where).endswith("in-a-row-2"):
            name = next(iter(sd))
            sd[name] = sd[name] + 1
        return sd

    monkeypatch.setattr(SafetensorsFormat, "load", off_by_one)
    opts = measure.Options(out=tmp_path, repeats=1, disk_reference=False, sustained=("safetensors",),
                           sustained_saves=2)
    env, _rows = measure.run(resolve("safetensors"), get_model("tiny"), opts)
    (rec,) = read_results([env["results_path"]]).sustained
    assert rec["verified"] is False and rec["error"].startswith("checkpoint 2 of 2: verification failed")
    assert len(rec["loads_s"]) == 2  # the load that came back wrong was timed, and the record stops there


def test_the_sustained_table_sets_the_saves_in_a_row_against_the_isolated_ones():
    from llama_ckpt.report.machine import sustained_findings, sustained_table

    recs = [{"approach": "a", "verified": True, "saves_s": [1.0, 2.0, 3.0], "loads_s": [0.5, 0.5, 2.0],
             "bytes_on_disk": 3 * 2**30},
            {"approach": "b", "verified": True, "saves_s": [1.0, 1.1, 1.0], "bytes_on_disk": 3 * 2**30}]
    rows = [{"approach": n, "verified": True, "save_s": s, "load_s": 0.5}
            for n, s in (("a", 1.0), ("a", 1.0), ("b", 1.0))]
    t = sustained_table(recs, rows)
    assert t.loc["a"].to_dict() == pytest.approx({"isolated_s": 1.0, "n_isolated": 2, "in_a_row": 3, "first_s": 1.0,
                                                  "median_s": 2.0, "last_s": 3.0, "slowest_s": 3.0,
                                                  "x_isolated": 2.0, "save_GiBps": 0.5, "load_median_s": 0.5,
                                                  "load_isolated_s": 0.5, "x_isolated_load": 1.0, "load_GiBps": 1.0,
                                                  "loads_cold": None})
    text = sustained_findings(recs, rows)
    assert "`a`: 3 saves in a row, median 2 s (first 1, last 3, slowest 3) against 1 s alone (median of 2)" in text
    assert "2.00x: slower in a row than alone" in text
    assert "read back cold, median 0.5 s against 0.5 s alone: 1.00x: the isolated figure holds" in text
    assert "MLPerf's unit: save 0.5 GiB/s, load 1 GiB/s" in text  # 1 GiB a checkpoint over 2 s and 1 s mean
    recs[0]["loads_cold"] = False  # an eviction that did not take: never called cold
    assert "read back (**not cold**" in sustained_findings(recs, rows)
    assert "`b`" in text and "1.00x: the isolated figure holds" in text
    assert "writes to freed space" in text and "to new space" in text  # which disk state each figure is about
    assert sustained_findings([], rows) == "No checkpoints saved back to back in this run."
