"""The claims logic on hand-made results: holds, does not hold, inconclusive."""

import random

from llama_ckpt.study.claims import (CLAIMS, CONFIDENCE, FAILS, GUIDE_EIGHT, HOLDS, MIN_REPEATS, N_BOOT,
                                      RATIO_TOLERANCE, RULE, UNSURE, Best, Check, Claim, Same, _boot_medians, decided,
                                      judge_claims, judge_cloud, ratio_interval, sample_sets, undecided_approaches)
from llama_ckpt.results import measurement_row


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
    rows = rows_for("tensorstore", [100, 102.5, 105, 107.5, 110]) + rows_for("ts+chunks", [9, 9.5, 10, 10.5, 11])
    c = claim(rows, 1)
    assert c["verdict"] == HOLDS and "-90%" in c["measured"] and decided(c)
    assert "0.0952x [0.0857-0.105] (95% CI), n=5/5" in c["measured"]  # the ratio, its interval, the samples
    assert "-91%" in c["guide"]  # the guide's own figures, 14 vs 150


def test_claim_1_does_not_hold_when_faster_but_not_by_90_percent():
    rows = rows_for("tensorstore", [100, 102.5, 105, 107.5, 110]) + rows_for("ts+chunks", [40, 41, 42, 43, 44])
    c = claim(rows, 1)
    assert c["verdict"] == FAILS and "not about 0.1x" in c["measured"]


def test_claim_1_holds_and_says_so_when_the_effect_is_stronger_than_claimed():
    rows = rows_for("tensorstore", [100, 102.5, 105, 107.5, 110]) + rows_for("ts+chunks", [3, 3.25, 3.5, 3.75, 4])
    c = claim(rows, 1)
    assert c["verdict"] == HOLDS and "stronger effect than the claimed 0.1x" in c["measured"]


def test_claim_1_does_not_hold_when_slower():
    rows = rows_for("tensorstore", [10, 10.5, 11, 11.5, 12]) + rows_for("ts+chunks", [20, 20.5, 21, 21.5, 22])
    assert claim(rows, 1)["verdict"] == FAILS


def test_claim_2_is_inconclusive_when_the_interval_straddles_1():
    rows = rows_for("tensorstore", [10, 12, 14, 17, 20]) + rows_for("ts+concurrency", [9, 9.5, 10, 12.5, 15])
    c = claim(rows, 2)
    assert c["verdict"] == UNSURE and "interval straddles 1" in c["measured"]


def test_claim_is_inconclusive_when_an_approach_is_missing():
    assert claim(rows_for("tensorstore", [1, 2]), 5)["verdict"] == UNSURE


def test_claim_3_needs_slower_save_slower_load_and_a_small_size_benefit():
    base = rows_for("tensorstore", [10, 10.25, 10.5, 10.75, 11], [5, 5.1, 5.2, 5.3, 5.4], [1000] * 5)
    small_gain = rows_for("ts+compression", [20, 20.5, 21, 21.5, 22], [8, 8.05, 8.1, 8.15, 8.2], [950] * 5)
    assert claim(base + small_gain, 3)["verdict"] == HOLDS
    big_gain = rows_for("ts+compression", [20, 20.5, 21, 21.5, 22], [8, 8.05, 8.1, 8.15, 8.2], [500] * 5)
    c = claim(base + big_gain, 3)
    assert c["verdict"] == FAILS and "more than 25%" in c["measured"]


def test_claim_4_flags_the_dtype_difference():
    rows = rows_for("tensorstore", [10, 10, 10, 10, 10], [5, 5, 5, 5, 5], [1000] * 5) + \
        rows_for("ts+float16", [10.5, 10.5, 10.5, 10.5, 10.5], [5.2, 5.2, 5.2, 5.2, 5.2], [500] * 5, dtype="float16")
    c = claim(rows, 4)
    assert c["verdict"] == HOLDS
    assert "float16: ts+float16" in c["dtypes"] and "float32: tensorstore" in c["dtypes"]


def test_same_speed_fails_beyond_tolerance_and_is_unsure_when_straddling_the_band():
    s = sample_sets(rows_for("a", [10, 10, 10, 10, 10]) + rows_for("b", [20, 20, 20, 20, 20]))
    assert Same("a", "b", "save").judge(s)[0] == FAILS
    s = sample_sets(rows_for("a", [10, 12.5, 15, 22.5, 30]) + rows_for("b", [12, 16, 20, 22.5, 25]))
    v, text = Same("a", "b", "save").judge(s)
    assert v == UNSURE and "straddles 0.85x and 1.15x" in text


def test_best_needs_every_contender_measured_and_a_clear_gap():
    s = sample_sets(rows_for("a", [1, 1.02, 1.05, 1.08, 1.1]) + rows_for("b", [2, 2.02, 2.05, 2.08, 2.1]))
    assert Best("a", "save", ("a", "b")).judge(s)[0] == HOLDS
    assert Best("b", "save", ("a", "b")).judge(s)[0] == FAILS
    assert Best("a", "save", ("a", "b", "c")).judge(s)[0] == UNSURE  # c not measured
    s = sample_sets(rows_for("a", [1, 1.5, 2, 2.5, 3]) + rows_for("b", [2, 2.5, 3, 3.5, 4]))
    assert Best("a", "save", ("a", "b")).judge(s)[0] == UNSURE


def test_invalid_rows_do_not_count():
    bad = rows_for("ts+chunks", [1, 1, 1, 1, 1])
    for r in bad:
        r["verified"] = False
    rows = rows_for("tensorstore", [100, 102.5, 105, 107.5, 110]) + bad
    assert claim(rows, 1)["verdict"] == UNSURE


def test_check_direction_for_slower_claims():
    s = sample_sets(rows_for("t5x", [20, 20.2, 20.5, 20.8, 21]) + rows_for("ts+chunks", [10, 10.2, 10.5, 10.8, 11]))
    assert Check("t5x", "ts+chunks", "save", lower=False).judge(s)[0] == HOLDS
    assert Check("ts+chunks", "t5x", "save", lower=False).judge(s)[0] == FAILS


def cloud_rows(delay, ocdbt_factor):
    """Rows on S3 at one delay: OCDBT approaches take ``ocdbt_factor`` times the plain ones."""
    out = []
    for plain, ocdbt in (("tensorstore", "ts+ocdbt"), ("ts+chunks", "ts+chunks[use_ocdbt=True]")):
        for name, f in ((plain, 1.0), (ocdbt, ocdbt_factor)):
            for r in rows_for(name, [10 * f, 10.2 * f, 10.5 * f, 10.8 * f, 11 * f],
                              [5 * f, 5.1 * f, 5.2 * f, 5.3 * f, 5.4 * f]):
                r.update(requests_save={"write": 10}, requests_load={"read": 10}, s3_delay_ms=delay)
                out.append(r)
    return out


def test_claim_9_is_judged_at_every_delay_and_takes_the_weakest_verdict():
    assert judge_cloud(cloud_rows(0, 0.5) + cloud_rows(20, 0.5))["verdict"] == HOLDS
    c = judge_cloud(cloud_rows(0, 0.5) + cloud_rows(20, 2.0))
    assert c["verdict"] == FAILS
    assert "+0 ms RTT (holds)" in c["measured"] and "+20 ms RTT (does not hold)" in c["measured"]
    assert judge_cloud(cloud_rows(0, 1.0))["verdict"] == UNSURE  # the same samples: the interval straddles 1
    assert judge_cloud(rows_for("tensorstore", [1, 2]))["verdict"] == UNSURE  # nothing on S3


def noisy(rng, center, n, sd=0.1):
    """``n`` samples around ``center`` with a relative noise of ``sd``."""
    return [center * (1 + rng.gauss(0, sd)) for _ in range(n)]


def test_the_same_rows_always_give_the_same_interval():
    # A fixed seed: re-rendering a run must not flip a verdict. The cache is cleared so the second draw is fresh.
    first = ratio_interval([9, 10, 11, 12], [100, 102, 104, 107, 110])
    _boot_medians.cache_clear()
    assert ratio_interval([9, 10, 11, 12], [100, 102, 104, 107, 110]) == first
    rows = rows_for("tensorstore", [10, 12, 14, 17, 20]) + rows_for("ts+concurrency", [9, 9.5, 10, 12.5, 15])
    assert claim(rows, 2) == claim(rows[::-1], 2)  # nor does the rows' order matter


def test_noise_alone_is_inconclusive_while_a_clear_2x_difference_holds():
    # The point of the interval: 5 repeats of one distribution must not read as a difference.
    rng = random.Random(0)
    s = sample_sets(rows_for("a", noisy(rng, 10, 5)) + rows_for("b", noisy(rng, 10, 5))
                    + rows_for("c", noisy(rng, 20, 5)))
    assert Check("a", "b", "save").judge(s)[0] == UNSURE
    assert Check("a", "c", "save").judge(s)[0] == HOLDS


def test_more_repeats_narrow_the_interval():
    # Summed over ten draws: one draw of 3 samples can happen to lie close together.
    def width(n):
        rng = random.Random(1)
        return sum(hi - lo for _, lo, hi in (ratio_interval(noisy(rng, 10, n), noisy(rng, 20, n)) for _ in range(10)))
    assert width(15) < width(3)


def test_repeats_is_the_smallest_sample_count():
    # What another repeat would add to: the approach with the fewest samples.
    rows = rows_for("tensorstore", [100, 101, 102, 103, 104, 105]) + rows_for("ts+chunks", [9, 9.5, 10, 10.5, 11])
    assert claim(rows, 1)["repeats"] == 5
    assert claim(rows, 6)["repeats"] == 0  # pytorch (and more) not measured
    assert judge_cloud(cloud_rows(0, 0.5))["repeats"] == 5


def test_claim_approaches():
    by = {c.number: c for c in CLAIMS}
    assert by[1].approaches() == ("ts+chunks", "tensorstore")
    assert by[3].approaches() == ("ts+compression", "tensorstore")  # three checks, one pair, each name once
    assert by[6].approaches() == GUIDE_EIGHT  # a Best's pool


def test_rule_states_the_constants():
    # Built from the constants, so the stated rule cannot drift from the applied one.
    assert f"{CONFIDENCE * 100:.0f}%" in RULE and str(N_BOOT) in RULE and f"{RATIO_TOLERANCE:g}" in RULE


def test_a_size_claim_straddling_its_threshold_is_inconclusive():
    # 0.11x-0.18x: partly "about 0.1x" (0.15x or less), partly weaker; neither verdict follows.
    rows = rows_for("tensorstore", [100, 102.5, 105, 107.5, 110]) + rows_for("ts+chunks", [12, 13.5, 15, 16.5, 18])
    c = claim(rows, 1)
    assert c["verdict"] == UNSURE and "straddles 0.15x" in c["measured"] and not decided(c)


def test_best_is_inconclusive_when_the_winner_cannot_be_separated_from_the_runner_up():
    s = sample_sets(rows_for("a", [1, 1.25, 1.5, 1.75, 2]) + rows_for("b", [1.2, 1.4, 1.6, 1.9, 2.2])
                    + rows_for("c", [5, 5.05, 5.1, 5.15, 5.2]))
    v, text = Best("a", "save").judge(s)
    assert v == UNSURE and text.endswith("straddles 1 against b")  # c is clearly slower: not named


def test_a_clear_difference_on_fewer_than_min_repeats_stays_inconclusive():
    # One or three samples a side give a bootstrap interval too narrow to trust: no verdict until MIN_REPEATS.
    few = rows_for("tensorstore", [100, 105, 110]) + rows_for("ts+chunks", [9, 10, 11])
    c = claim(few, 1)
    assert c["verdict"] == UNSURE and f"fewer than {MIN_REPEATS} repeats" in c["measured"] and not decided(c)
    assert undecided_approaches(CLAIMS[0], sample_sets(few)) == ("ts+chunks", "tensorstore")
    enough = rows_for("tensorstore", [100, 102.5, 105, 107.5, 110]) + rows_for("ts+chunks", [9, 9.5, 10, 10.5, 11])
    assert claim(enough, 1)["verdict"] == HOLDS and undecided_approaches(CLAIMS[0], sample_sets(enough)) == ()


def test_undecided_best_names_only_the_contenders_it_cannot_separate_from():
    s = sample_sets(rows_for("pytorch", [1, 1.1, 1.2, 1.3, 1.4]) + rows_for("t5x", [1.05, 1.15, 1.25, 1.35, 1.45])
                    + rows_for("tensorstore", [5, 5.1, 5.2, 5.3, 5.4]))
    claim_ = Claim(0, "pytorch is fastest", [Best("pytorch", "save", ("pytorch", "t5x", "tensorstore"))])
    assert claim_.judge(s)["verdict"] == UNSURE
    # tensorstore is clearly slower: more repeats of it decide nothing
    assert undecided_approaches(claim_, s) == ("pytorch", "t5x")
    # an approach the claim compares that was not measured at all is undecided too: measuring it can decide it
    missing = Claim(0, "pytorch is fastest", [Best("pytorch", "save", ("pytorch", "t5x", "tensorstore", "ts+ocdbt"))])
    assert undecided_approaches(missing, s) == ("ts+ocdbt", "pytorch", "t5x")


def test_a_claimed_difference_that_is_exactly_absent_does_not_hold():
    # Sizes do not vary between repeats: gzip on full-mantissa float32 at 64-element chunks leaves every chunk file
    # the same number of 4 KiB blocks, so "smaller" is exactly false, not undecided.
    rows = (rows_for("tensorstore", [10, 10.5, 11, 11.5, 12], [5, 5.1, 5.2, 5.3, 5.4], [1000] * 5)
            + rows_for("ts+compression", [20, 20.5, 21, 21.5, 22], [8, 8.1, 8.2, 8.3, 8.4], [1000] * 5))
    c = claim(rows, 3)
    assert c["verdict"] == FAILS and "no difference at all" in c["measured"]
