"""The claims logic on hand-made results: holds, does not hold, inconclusive."""

from llama_ckpt.report.claims import FAILS, HOLDS, UNSURE, Best, Check, Same, judge_claims
from llama_ckpt.results import measurement_row, summarize


def rows_for(approach, saves, loads=None, sizes=None, dtype="float32"):
    loads = loads or [1.0] * len(saves)
    sizes = sizes or [100] * len(saves)
    return [measurement_row(run_id="r", approach=approach, model="m", n_tensors=3, tensor_set="t", stored_dtype=dtype,
                            repeat=i + 1, save_s=s, load_s=l, load_cold=True, bytes_on_disk=z, bytes_apparent=z,
                            n_files=1, verified=True)
            for i, (s, l, z) in enumerate(zip(saves, loads, sizes))]


def claim(rows, n):
    (c,) = judge_claims(rows, (n,))
    return c


def test_claim_1_holds_when_chunks_save_about_90_percent_faster():
    rows = rows_for("tensorstore", [100, 105, 110]) + rows_for("ts+chunks", [9, 10, 11])
    c = claim(rows, 1)
    assert c["verdict"] == HOLDS and "-90%" in c["measured"]
    assert "-91%" in c["guide"]  # the guide's own figures, 14 vs 150


def test_claim_1_does_not_hold_when_faster_but_not_by_90_percent():
    rows = rows_for("tensorstore", [100, 105, 110]) + rows_for("ts+chunks", [40, 42, 44])
    c = claim(rows, 1)
    assert c["verdict"] == FAILS and "not about 0.1x" in c["measured"]


def test_claim_1_holds_and_says_so_when_the_effect_is_stronger_than_claimed():
    rows = rows_for("tensorstore", [100, 105, 110]) + rows_for("ts+chunks", [3, 3.5, 4])
    c = claim(rows, 1)
    assert c["verdict"] == HOLDS and "stronger effect than the claimed 0.1x" in c["measured"]


def test_claim_1_does_not_hold_when_slower():
    rows = rows_for("tensorstore", [10, 11, 12]) + rows_for("ts+chunks", [20, 21, 22])
    assert claim(rows, 1)["verdict"] == FAILS


def test_claim_2_is_inconclusive_when_the_ranges_overlap():
    rows = rows_for("tensorstore", [10, 14, 20]) + rows_for("ts+concurrency", [9, 10, 15])
    c = claim(rows, 2)
    assert c["verdict"] == UNSURE and "overlap" in c["measured"]


def test_claim_is_inconclusive_when_an_approach_is_missing():
    assert claim(rows_for("tensorstore", [1, 2]), 5)["verdict"] == UNSURE


def test_claim_3_needs_slower_save_slower_load_and_a_small_size_benefit():
    base = rows_for("tensorstore", [10, 10.5, 11], [5, 5.2, 5.4], [1000] * 3)
    small_gain = rows_for("ts+compression", [20, 21, 22], [8, 8.1, 8.2], [950] * 3)
    assert claim(base + small_gain, 3)["verdict"] == HOLDS
    big_gain = rows_for("ts+compression", [20, 21, 22], [8, 8.1, 8.2], [500] * 3)
    c = claim(base + big_gain, 3)
    assert c["verdict"] == FAILS and "more than 25%" in c["measured"]


def test_claim_4_flags_the_dtype_difference():
    rows = rows_for("tensorstore", [10, 10, 10], [5, 5, 5], [1000] * 3) + \
        rows_for("ts+float16", [10.5, 10.5, 10.5], [5.2, 5.2, 5.2], [500] * 3, dtype="float16")
    c = claim(rows, 4)
    assert c["verdict"] == HOLDS
    assert "float16: ts+float16" in c["dtypes"] and "float32: tensorstore" in c["dtypes"]


def test_same_speed_fails_beyond_tolerance_and_is_unsure_on_overlap():
    s = summarize(rows_for("a", [10, 10, 10]) + rows_for("b", [20, 20, 20]))
    assert Same("a", "b", "save").judge(s)[0] == FAILS
    s = summarize(rows_for("a", [10, 15, 30]) + rows_for("b", [12, 20, 25]))
    assert Same("a", "b", "save").judge(s)[0] == UNSURE


def test_best_needs_every_contender_measured_and_a_clear_gap():
    s = summarize(rows_for("a", [1, 1.1]) + rows_for("b", [2, 2.1]))
    assert Best("a", "save", ("a", "b")).judge(s)[0] == HOLDS
    assert Best("b", "save", ("a", "b")).judge(s)[0] == FAILS
    assert Best("a", "save", ("a", "b", "c")).judge(s)[0] == UNSURE  # c not measured
    s = summarize(rows_for("a", [1, 3]) + rows_for("b", [2, 4]))
    assert Best("a", "save", ("a", "b")).judge(s)[0] == UNSURE


def test_invalid_rows_do_not_count():
    bad = rows_for("ts+chunks", [1, 1, 1])
    for r in bad:
        r["verified"] = False
    rows = rows_for("tensorstore", [100, 105, 110]) + bad
    assert claim(rows, 1)["verdict"] == UNSURE


def test_check_direction_for_slower_claims():
    s = summarize(rows_for("t5x", [20, 21]) + rows_for("ts+chunks", [10, 11]))
    assert Check("t5x", "ts+chunks", "save", lower=False).judge(s)[0] == HOLDS
    assert Check("ts+chunks", "t5x", "save", lower=False).judge(s)[0] == FAILS


def cloud_rows(delay, ocdbt_factor):
    """Rows on S3 at one delay: OCDBT approaches take ``ocdbt_factor`` times the plain ones."""
    out = []
    for plain, ocdbt in (("tensorstore", "ts+ocdbt"), ("ts+chunks", "ts+chunks[use_ocdbt=True]")):
        for name, f in ((plain, 1.0), (ocdbt, ocdbt_factor)):
            for r in rows_for(name, [10 * f, 10.5 * f, 11 * f], [5 * f, 5.2 * f, 5.4 * f]):
                r.update(requests_save={"write": 10}, requests_load={"read": 10}, s3_delay_ms=delay)
                out.append(r)
    return out


def test_claim_9_is_judged_at_every_delay_and_takes_the_weakest_verdict():
    from llama_ckpt.report.claims import judge_cloud

    assert judge_cloud(cloud_rows(0, 0.5) + cloud_rows(20, 0.5))["verdict"] == HOLDS
    c = judge_cloud(cloud_rows(0, 0.5) + cloud_rows(20, 2.0))
    assert c["verdict"] == FAILS and "+0 ms RTT (holds)" in c["measured"] and "+20 ms RTT (does not hold)" in c["measured"]
    assert judge_cloud(cloud_rows(0, 1.0))["verdict"] == UNSURE  # overlapping ranges
    assert judge_cloud(rows_for("tensorstore", [1, 2]))["verdict"] == UNSURE  # nothing on S3
