"""Each approach's counted work (fsyncs among it), its cost card, and the model that predicts a time from a card,
a profile and a size alone (docs/decisions.md#work-model), through the `profile` and `predict` commands."""

import json
import os

import pytest

from llama_ckpt.bench import probes
from llama_ckpt.recorders import CpuIO
from llama_ckpt.registry import APPROACHES
from llama_ckpt.results import MachineProfile, measurement_row
from llama_ckpt.results import work
from tests.helpers import assert_one_line_error, cli_here


def test_cpuio_counts_the_fsyncs_made_through_python(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        with CpuIO() as outside:
            with CpuIO() as inside:
                os.write(fd, b"x")
                for _ in range(3):
                    os.fsync(fd)
            os.fdatasync(fd)
    finally:
        os.close(fd)
    assert inside.result["fsync_calls"] == 3 and outside.result["fsync_calls"] == 4


def test_cpuio_says_how_much_memory_the_block_left_in_huge_pages():
    """The fresh memory of a format that asks for transparent huge pages (the Run:ai streamer's buffers) faults
    once per 2 MiB: the row says how much of it came that way, and the card carries it per byte."""
    import mmap

    from llama_ckpt.bench.machine import thp_mode

    if thp_mode() not in ("always", "madvise") or not hasattr(mmap, "MADV_HUGEPAGE"):
        pytest.skip("this kernel offers no transparent huge pages")
    with CpuIO() as w:
        m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.madvise(mmap.MADV_HUGEPAGE)
        for i in range(0, len(m), 4096):
            m[i] = 1
    m.close()
    assert w.result["huge_page_bytes"] >= 32 << 20 and w.result["minor_faults"] < 8192, w.result
    row = _row()
    row["cpu_io_load"] = dict(row["cpu_io_load"], huge_page_bytes=10**9)
    assert work.card_of([row], "load", _profile(2, 1e9)).huge_per_B == pytest.approx(1.0)
    assert work.card_of([_row()], "load", _profile(2, 1e9)).huge_per_B is None  # rows from before it was counted


@pytest.mark.parametrize("name", ["tensorstore"])
def test_a_formats_native_fsyncs_are_what_strace_counts(name, tiny_sd, tmp_path):
    """The save's fsyncs as the rows count them (Python's + the format's stated policy) against strace's count
    of every fsync of the same save in a child process."""
    traced = probes.syscall_profile(name, "tiny", tmp_path)
    if traced is None or traced.get("error"):
        pytest.skip(f"strace cannot trace here: {traced and traced.get('error')}")
    fmt = APPROACHES[name]
    ckpt = tmp_path / "ckpt"
    with CpuIO() as c:
        fmt.save({k: v.clone() for k, v in tiny_sd.items()}, str(ckpt))
    n_files = sum(len(f) for _, _, f in os.walk(ckpt))
    assert c.result["fsync_calls"] == traced["fsync_calls"] - fmt.native_fsyncs(n_files)
    assert fmt.native_fsyncs(n_files) > c.result["fsync_calls"]  # TensorStore's native calls are most of them


def _rate(x):
    return {"median": x, "spread_pct": 0.0, "samples": [x]}


def _profile(cores, disk_write, disk_read=1e9):
    return MachineProfile.from_dict({
        "cores": cores, "page_bytes": 4096, "buffered_write_Bps": _rate(2e9), "fresh_memory_Bps": _rate(4096e6),
        "durable_freed_Bps": _rate(disk_write), "file_creates_per_s": _rate(1e4), "fsyncs_per_s": _rate(1e3),
        "reference": {"reference_read_Bps": disk_read}})


def _row(save_s=1.2, load_s=1.25):
    return measurement_row(
        run_id="r", approach="fmt", model="m", repeat=1, verified=True, payload_bytes=10**9, n_files=10,
        stored_dtype="float32", write_streams=1, save_s=save_s, load_s=load_s, fsyncs_save=20,
        rss_before_save_bytes=15 * 10**8, peak_rss_save_bytes=30 * 10**8,
        rss_before_load_bytes=12 * 10**8, peak_rss_load_bytes=22 * 10**8,
        cpu_io_save={"user_s": 0.4, "sys_s": 0.6, "write_bytes": 10**9, "read_bytes": 0, "minor_faults": 10**5,
                     "storage_write_bytes": 10**9, "storage_read_bytes": 0, "busiest_thread_s": 0.5},
        cpu_io_load={"user_s": 0.3, "sys_s": 0.2, "write_bytes": 0, "read_bytes": 10**9, "minor_faults": 0,
                     "storage_read_bytes": 10**9, "storage_write_bytes": 0, "busiest_thread_s": 0.5})


def test_a_prediction_is_the_frozen_form_from_a_card_file_and_a_profile_file_alone(tmp_path):
    """The card state: 4 cores, the disk at 1 GB/s; the target: one core, the disk at 0.5 GB/s.
    Worked by hand from docs/decisions.md#work-model-2."""
    cards = work.cards([_row(), _row(save_s=1.3), _row(save_s=1.1)], _profile(4, 1e9))
    assert [(c.approach, c.step) for c in cards] == [("fmt", "save"), ("fmt", "load")]
    save, load = cards
    # per 1e9 bytes: copy 0.5 s, faults 0.1 s (1e5 x 4096 B at 4.096 GB/s), own CPU 1.0 - 0.6 = 0.4 s
    assert save.own_cpu_per_B * 1e9 == pytest.approx(0.4)
    # parallel: CPU 1.0 s over the busiest thread's 0.5 s, measured (not what the disk left over)
    assert save.parallel == pytest.approx(2.0) and load.parallel == pytest.approx(1.0)
    # held above the step's start at its peak, per byte: the save's staging (1.5 GB), the load's result (1.0 GB)
    assert save.held_per_B == pytest.approx(1.5) and load.held_per_B == pytest.approx(1.0)
    # overlap: CPU 1.0 / 2 + disk 1.0 + files 0.001 + fsyncs 0.02 - time 1.2, over the smaller (CPU 0.5)
    assert save.overlap == pytest.approx(0.321 / 0.5)
    # load: CPU 0.5 / 1 + disk 1.0 - time 1.25, over 0.5
    assert load.overlap == pytest.approx(0.5)
    path = tmp_path / "cost-cards.json"
    work.write_cards(path, cards, _profile(4, 1e9), "r")
    target = tmp_path / "target.json"
    target.write_text(json.dumps(_profile(1, 5e8).to_dict()))
    r = cli_here("predict", "--cards", str(path), "--profile", str(target), "--json")
    assert r.returncode == 0, r.stderr
    got = {p["step"]: p for p in json.loads(r.stdout)}
    # save on one core: CPU (0.5 + 0.1 + 0.4) / 1, disk 1e9 / 5e8, the overlap's share of the smaller (CPU)
    # taken off, files 10 / 1e4, fsyncs 20 / 1e3
    assert got["save"]["seconds"] == pytest.approx(1.0 + 2.0 - 0.642 * 1.0 + 0.001 + 0.02)
    assert got["save"]["binding"] == "disk"
    assert got["save"]["parts"]["own CPU"] == pytest.approx(0.4 * (1 - 0.642))  # the smaller one's parts shrink
    # load: copy 0.5, own 0.0 on one core; disk 1e9 / 1e9; half the smaller taken off
    assert got["load"]["seconds"] == pytest.approx(0.5 + 1.0 - 0.5 * 0.5)
    text = cli_here("predict", "--cards", str(path), "--profile", str(target))
    assert text.returncode == 0 and "fmt" in text.stdout and "own CPU s" in text.stdout
    # on 8 cores the CPU work spreads over the cores it used (parallel 2), not over all 8
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps(_profile(8, 5e8).to_dict()))
    got = {p["step"]: p for p in json.loads(cli_here("predict", "--cards", str(path), "--profile", str(wide),
                                                      "--json").stdout)}
    assert got["save"]["seconds"] == pytest.approx(0.5 + 2.0 - 0.642 * 0.5 + 0.001 + 0.02)
    # with no disk the overlap takes nothing off: the CPU work alone, over the cores it used
    memory = _profile(1, 5e8).to_dict() | {"fs_type": "tmpfs"}
    assert work.predict(load, memory, 10**9).seconds == pytest.approx(0.5)
    # a profile from before the suite measured a file's create and an fsync apart cannot predict a save
    old = _profile(1, 5e8).to_dict() | {"file_creates_per_s": None, "fsyncs_per_s": None}
    assert work.predict(save, old, 10**9) is None and work.predict(load, old, 10**9) is not None


def test_a_steps_parallelism_is_its_cpu_over_its_busiest_threads():
    """The recorder counts each thread's CPU: two threads spinning together make a parallelism near 2, one
    thread near 1; a row whose busiest thread used too little CPU to tell is taken as one thread."""
    import threading
    import time

    def spin(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    with CpuIO() as one:
        spin(0.3)
    with CpuIO() as two:
        ts = [threading.Thread(target=spin, args=(0.3,)) for _ in range(2)]
        [t.start() for t in ts]
        spin(0.3)  # the main thread too: three threads in all
        [t.join() for t in ts]
    for c, threads in ((one, 1), (two, 3)):
        cpu = c.result["user_s"] + c.result["sys_s"]
        assert c.result["busy_threads"] >= 1
        assert cpu / c.result["busiest_thread_s"] == pytest.approx(threads, rel=0.35), c.result
    row = _row() | {"cpu_io_save": _row()["cpu_io_save"] | {"busiest_thread_s": 0.01}}
    assert work.cards([row], _profile(4, 1e9))[0].parallel == 1.0


def test_a_card_takes_nothing_from_the_state_it_predicts():
    """The check of another state predicts from the cards alone: its rows change only the measured column."""
    cards = work.cards([_row()], _profile(4, 1e9))
    slow, fast = [_row(save_s=9.0, load_s=9.0)], [_row(save_s=0.1, load_s=0.1)]
    a, b = work.check(cards, slow, _profile(1, 5e8)), work.check(cards, fast, _profile(1, 5e8))
    assert [x["predicted_s"] for x in a] == [x["predicted_s"] for x in b]
    assert a[0]["error"] == pytest.approx(9.0 / a[0]["predicted_s"] - 1)


def test_profile_writes_a_profile_and_predict_rejects_bad_input(tmp_path):
    out = tmp_path / "p.json"
    r = cli_here("profile", "--out", str(out), "--dir", str(tmp_path), "--model", "tiny")
    assert r.returncode == 0, r.stderr
    prof = MachineProfile.read(out)
    assert prof.cores >= 1 and prof.page_bytes and prof.fsyncs_per_s.median > 0 and prof.file_creates_per_s
    assert not [p for p in tmp_path.iterdir() if p.name != "p.json"]  # its scratch files removed
    assert_one_line_error(cli_here("profile", "--out", str(out), "--dir", str(tmp_path / "no")), "no such directory")
    assert_one_line_error(cli_here("predict", "--cards", str(tmp_path / "none.json"), "--profile", str(out)),
                          "no such file")
    assert_one_line_error(cli_here("predict", "--cards", str(out), "--profile", str(out)), "not a cost-card file")
    cards = tmp_path / "cards.json"
    work.write_cards(cards, work.cards([_row()], _profile(4, 1e9)), _profile(4, 1e9), "r")
    assert_one_line_error(cli_here("predict", "--cards", str(cards), "--profile", str(cards)), "lacks the rates")
    broken = json.loads(cards.read_text())
    del broken["cards"][0]["own_cpu_per_B"]
    cards.write_text(json.dumps(broken))
    assert_one_line_error(cli_here("predict", "--cards", str(cards), "--profile", str(out)), "not a cost-card file")


def test_a_check_also_predicts_with_the_disk_beside_the_states_rounds():
    """Point 5: the same form with the disk's rate of the references beside the predicted state's rounds (each
    round once), never from the rows' own work; a state without references gets no such column."""
    cards = work.cards([_row()], _profile(4, 1e9))
    state = lambda n, w, r: {"round": n, "write_Bps": w, "read_Bps": r, "bytes": 1 << 28}
    rows = [_row(save_s=3.0) | {"disk_state": state(1, 4e8, 8e8)},
            _row(save_s=3.2) | {"disk_state": state(1, 4e8, 8e8)},  # the same round: counted once
            _row(save_s=2.8) | {"disk_state": state(2, 6e8, 6e8)},
            _row(save_s=2.9) | {"disk_state": state(3, 5e8, 7e8)}]
    assert work.rounds_disk(rows, "save") == 5e8 and work.rounds_disk(rows, "load") == 7e8
    got = {c["step"]: c for c in work.check(cards, rows, _profile(1, 1e9))}
    # save on one core: CPU 1.0, disk 1e9 / 5e8 (the rounds' median, not the profile's 1e9), the card's overlap
    # (0.642) of the smaller taken off, files, fsyncs
    assert got["save"]["predicted_rounds_s"] == pytest.approx(1.0 + 2.0 - 0.642 + 0.001 + 0.02)
    assert got["save"]["predicted_s"] == pytest.approx(1.0 + 1.0 - 0.642 + 0.001 + 0.02)
    assert got["save"]["error_rounds"] == pytest.approx(2.95 / got["save"]["predicted_rounds_s"] - 1)
    assert work.check(cards, [_row()], _profile(1, 1e9))[0]["predicted_rounds_s"] is None
    from llama_ckpt.report import work as report_work

    t = report_work.check_table(cards, rows, _profile(1, 1e9))
    assert {"predicted_rounds_s", "error_rounds", "within_rounds"} <= set(t.columns)
    assert "with the rounds' disk" in report_work.check_line(t, "slow-disk")
    assert "predicted_rounds_s" not in report_work.check_table(cards, [_row()], _profile(1, 1e9)).columns


def test_the_no_disk_ranking_says_how_far_the_recommended_configuration_is_from_the_fastest():
    """Issue 36's aim in the summary's no-disk lines: ts+best's median over the fastest approach's that stores the
    same dtype (a faster float16 file is not its yardstick), met at most 1.2x."""
    from llama_ckpt.report.summary import Summary
    from llama_ckpt.study.aims import NO_DISK_BEST

    rows = [dict(_row(save_s=1.0, load_s=0.5), approach="quick", repeat=i) for i in range(5)] + \
        [dict(_row(save_s=0.2, load_s=0.1), approach="half", stored_dtype="float16", repeat=i) for i in range(5)] + \
        [dict(_row(save_s=s, load_s=ld), approach=NO_DISK_BEST, repeat=i)
         for i, (s, ld) in enumerate([(1.1, 2.0), (1.15, 2.1), (1.1, 1.9), (1.2, 2.0), (1.05, 2.0)])]
    rows = [dict(r, bytes_apparent=10**9) for r in rows]  # as every measured row has
    line, = Summary._no_disk_aim(rows)
    assert "fastest other float32 approach" in line, line
    assert "save 1.1 s, 1.10x `quick` (met)" in line and "load 2 s, 4.00x `quick` (not met)" in line, line
    assert "as few as" not in line  # 5 repeats each
    line, = Summary._no_disk_aim([r for r in rows if r["repeat"] < 2])
    assert "(medians of as few as 2 repeats; the aim asks 5)" in line, line
    assert Summary._no_disk_aim([r for r in rows if r["approach"] != NO_DISK_BEST]) == []
    # the fastest itself: against the next of its dtype, below 1x; alone in its dtype: no line
    slow = [dict(r, approach="slow", save_s=2.2, load_s=4.0) for r in rows if r["approach"] == "quick"]
    line, = Summary._no_disk_aim([r for r in rows if r["approach"] != "quick"] + slow)
    assert "save 1.1 s, 0.50x `slow` (met)" in line and "load 2 s, 0.50x `slow` (met)" in line, line
    assert Summary._no_disk_aim([r for r in rows if r["approach"] != "quick"]) == []
