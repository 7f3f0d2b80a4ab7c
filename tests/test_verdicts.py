"""Verdicts that survive a second run: a configuration measured once per run and
shared by the phases, the claims' phase adding repeats only where a claim is
undecided, claims 3 and 4 on both kinds of weights, and the summary's count of
earlier runs of the same commit and model."""

import json

import pytest

from llama_ckpt.report import summary
from llama_ckpt.study.claims import (CLAIMS, GUIDE_EIGHT, HOLDS, MIN_REPEATS, OTHER_WEIGHTS_CLAIMS, UNSURE, sample_sets,
                                     undecided_approaches)
from llama_ckpt.results import GIT_COMMIT, measurement_row, read_results
from llama_ckpt.study import phases, runs
from llama_ckpt import suite

RUN = "v1"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """00, 4c and 4d on tiny in one run, 2 repeats, 4c and 4d also on the other weights (OTHER_WEIGHTS, off in the
    default run): 4c and 4d share 00's tensorstore rows."""
    out = tmp_path_factory.mktemp("verdicts")
    said = []
    results = {p: suite.run(p, model="tiny", repeats=2, out_dir=out, run_id=RUN, say=said.append,
                            **({} if p == "00" else {"other_weights": True}))
               for p in ("00", "4c", "4d")}
    return out, results, said


def test_a_configuration_is_measured_once_per_run_and_shared(measured):
    out, results, said = measured
    own = read_results([runs.results_path(out, RUN, "4c-compression")]).measurements
    assert "tensorstore" not in {r["approach"] for r in own if r["model"] == "tiny"}  # 00 measured it
    shared = [r for r in results["4c"].rows if r["approach"] == "tensorstore"]
    assert len(shared) == 2 and {r["phase"] for r in shared} == {"00-baselines"}
    assert any("tensorstore: 2 repeat(s) measured in this run by 00-baselines, shared" in s for s in said)
    # every configuration of the run's weights was measured exactly `repeats` times across the phases, but 4d's
    # sweep points no claim judges (SWEEP_REPEATS)
    every = [r for p in ("00-baselines", "4c-compression", "4d-float16")
             for r in read_results([runs.results_path(out, RUN, p)]).measurements if r["model"] == "tiny"]
    counts = {}
    for r in every:
        key = (r["approach"], json.dumps(r["knobs"], sort_keys=True))
        counts[key] = counts.get(key, 0) + 1
    once = {n for p in ("00", "4c", "4d") for n in phases.get_phase(p).fewer(2)}
    assert once == {"ts+bfloat16", "ts+chunks[compression=gzip]", "ts+chunks[compression=gzip:9]",
                    "ts+chunks[compression=zstd]", "ts+chunks[compression=blosc-lz4]"}  # ts+chunks: a guide approach
    assert {k: v for k, v in counts.items() if k[0] not in once} and set(
        v for k, v in counts.items() if k[0] not in once) == {2}
    assert sorted(k[0] for k in counts if k[0] in once) == sorted(once)
    assert {v for k, v in counts.items() if k[0] in once} == {phases.SWEEP_REPEATS}
    assert all(any(f"{n}: a sweep point no claim judges, {phases.SWEEP_REPEATS} repeat(s)" in s for s in said)
               for n in once)


def test_compression_and_float16_are_measured_on_both_kinds_of_weights(measured):
    out, results, _ = measured
    other = results["4c"].other
    assert {(r["approach"], r["model"], r["weights"]) for r in other} == {
        ("tensorstore", "tiny:float32", "float32"), ("ts+compression", "tiny:float32", "float32")}
    # 4d shares 4c's tensorstore on float32 weights, and measures ts+float16 on them itself
    d = results["4d"].other
    assert {r["phase"] for r in d if r["approach"] == "tensorstore"} == {"4c-compression"}
    f16 = [r for r in d if r["approach"] == "ts+float16"]
    assert len(f16) == 2 and all(r["max_abs_err"] > 0 for r in f16)  # full mantissas: the cast loses
    main = [r for r in results["4d"].rows if r["approach"] == "ts+float16"]
    assert all(r["max_abs_err"] == 0 for r in main)  # float16-origin: the cast is exact
    assert runs.phase_complete(out, RUN, "4c-compression")  # both kinds ended


def test_a_complete_phase_is_read_back_with_its_shared_rows(measured):
    out, results, _ = measured
    again = suite.run("4d", model="tiny", repeats=2, out_dir=out, run_id=RUN, say=lambda s: None)
    assert again.reused
    key = lambda rs: sorted((r["approach"], r["repeat"], r["phase"], r["model"]) for r in rs)
    assert key(again.rows) == key(results["4d"].rows) and key(again.other) == key(results["4d"].other)


def test_the_claims_phase_adds_repeats_only_where_a_claim_is_undecided(measured):
    out, _, _ = measured
    said = []
    res = suite.run("08", model="tiny", out_dir=out, run_id=RUN, cap=MIN_REPEATS, step=2, say=said.append)
    assert res.rounds and all(r["target"] <= MIN_REPEATS for r in res.rounds)
    counts = {}
    for r in res.rows:
        counts[r["approach"]] = counts.get(r["approach"], 0) + 1
    assert max(counts.values()) <= MIN_REPEATS
    added = read_results([runs.results_path(out, RUN, "08-claims")]).measurements
    assert added and {r["phase"] for r in added} == {"08-claims"}
    # an approach got more repeats only because a claim needed it: none beyond those named in a round
    named = {(r["model"], n) for rd in res.rounds for n in rd["approaches"] for r in [rd]}
    assert {(r["model"], r["approach"]) for r in added} <= named
    # at the end, a claim is undecided only where its approaches reached the cap (or one is not measured)
    samples = sample_sets(res.rows)
    for c in CLAIMS:
        for n in undecided_approaches(c, samples):
            assert counts.get(n, 0) >= MIN_REPEATS
    # the float32 weights got rounds too, for claims 3 and 4 only
    assert all(set(sum(rd["approaches"].values(), [])) <= {3, 4} for rd in res.rounds if rd["weights"] == "float32")
    assert runs.phase_complete(out, RUN, "08-claims")
    again = suite.run("08", model="tiny", out_dir=out, run_id=RUN, cap=MIN_REPEATS, say=lambda s: None)
    assert again.reused and again.rounds == res.rounds


def _fake_run(out, run_id, chunk_save, commit=GIT_COMMIT, model="tiny"):
    """A run whose only results are claim 1's pair: ts+chunks saves in ``chunk_save`` x the baseline's time."""
    p = runs.results_path(out, run_id, "4b-chunks")
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"record": "environment", "run_id": run_id, "model": model, "git_commit": commit}]
    for n, f in (("tensorstore", 1.0), ("ts+chunks", chunk_save)):
        rows += [measurement_row(run_id=run_id, approach=n, model=model, weights="float16-origin", n_tensors=3,
                                 tensor_set="t", stored_dtype="float32", repeat=k, save_s=f * (10 + k / 10),
                                 load_s=1.0, load_cold=True, bytes_on_disk=100, bytes_apparent=100, n_files=1,
                                 verified=True) for k in range(1, 6)]
    rows.append({"record": "end", "run_id": run_id, "complete": True})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_summary_counts_the_earlier_runs_of_the_same_commit_and_model(tmp_path):
    _fake_run(tmp_path, "20260101-000001", 0.1)  # claim 1 holds
    _fake_run(tmp_path, "20260101-000002", 0.5)  # does not hold
    _fake_run(tmp_path, "20260101-000003", 0.1, commit="another")  # another commit: not counted
    _fake_run(tmp_path, "20260101-000004", 0.1, model="small")  # another model: not counted
    _fake_run(tmp_path, "20260101-000005", 0.1)
    s = summary.load(tmp_path, "20260101-000005")
    t = s.claims_table()
    row = t.loc[(1, "float16-origin")]
    assert row["verdict"] == HOLDS and row["repeats"] == 5
    assert row["earlier runs"] == "held in 1 of 2"
    assert t.loc[(2, "float16-origin")]["verdict"] == UNSURE  # not measured in these runs


def _seed(out, run_id, repeats):
    """``repeats`` rows of every approach a claim compares on the tiny preset's weights (of claims 3 and 4 on
    its other weights), as the run's phases would leave them."""
    p = runs.results_path(out, run_id, "00-baselines")
    p.parent.mkdir(parents=True, exist_ok=True)
    other = {n for c in CLAIMS if c.number in OTHER_WEIGHTS_CLAIMS for n in c.approaches()}
    rows = [{"record": "environment", "run_id": run_id, "model": "tiny", "git_commit": GIT_COMMIT}]
    rows += [measurement_row(run_id=run_id, approach=n, model=m, weights=w, n_tensors=3, tensor_set="t",
                             stored_dtype="float32", repeat=k, save_s=1.0 + k / 100, load_s=1.0 + k / 100,
                             load_cold=True, bytes_on_disk=100, bytes_apparent=100, n_files=1, verified=True)
             for m, w, ns in (("tiny", "float16-origin", GUIDE_EIGHT), ("tiny:float32", "float32", other))
             for n in ns for k in range(1, repeats + 1)]
    rows.append({"record": "end", "run_id": run_id, "complete": True})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_claims_phase_budget_bounds_only_the_repeats_beyond_the_rules_minimum(tmp_path):
    _seed(tmp_path, "b0", MIN_REPEATS - 1)  # the phases' rows: one repeat short of the rule's minimum
    res = suite.run("08", model="tiny", out_dir=tmp_path, run_id="b0", budget_s=0.0, cap=MIN_REPEATS + 2,
                    say=lambda s: None)
    # the first round (on each kind of weights) brings every approach a claim needs to the minimum, whatever
    # the budget ...
    first = [rd for rd in res.rounds if rd["round"] == 1]
    assert {rd["weights"] for rd in first} == {"float16-origin", "float32"}
    assert all(rd["target"] == MIN_REPEATS and rd["added"] > 0 for rd in first)
    counts = {}
    for r in res.rows + res.other:
        counts[(r["model"], r["approach"])] = counts.get((r["model"], r["approach"]), 0) + 1
    assert set(counts.values()) == {MIN_REPEATS}
    # ... and a zero budget starts none beyond it
    # (the seeded rows are alike across approaches, so a claim is still undecided after the first round)
    assert not [rd for rd in res.rounds if rd["round"] > 1]
    assert res.stopped == f"no repeats beyond {MIN_REPEATS}: the time budget for them (CLAIMS_BUDGET_S) is 0"
    assert runs.phase_complete(tmp_path, "b0", "08-claims")


def test_the_aims_are_05s_first_comparisons_and_the_summary_reads_them():
    from llama_ckpt.study.aims import AIM_APPROACHES, FORMAT_AIMS

    p = phases.get_phase("05")
    assert p.comparisons()[:len(FORMAT_AIMS)] == FORMAT_AIMS  # 05's findings open with them
    assert set(AIM_APPROACHES) <= {a.name for a in p.approaches()}  # and 05 measures every approach they compare
    assert AIM_APPROACHES == tuple(dict.fromkeys(n for pair in FORMAT_AIMS for n in pair))
