"""The run scaffold (bench.scaffold): what a run does to the machine is said, recorded and an option; one run
per machine; a disk cap a killed run left is put back; a throttle the run did not set is found and recorded in
every row; how busy the machine was beside each timed step. The cgroup tree is a stand-in: the machine's own
throttle is never touched by a test."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from llama_ckpt import fsutil
from llama_ckpt.bench import diskcap, measure, scaffold, training
from llama_ckpt.bench.savers import SAVERS
from llama_ckpt.errors import UserError
from llama_ckpt.model import get_model
from llama_ckpt.recorders import MachineBusy
from llama_ckpt.registry import APPROACHES


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """This test's own machine directory (lock, cap state), a writable stand-in for drop_caches, and lines said
    about the machine said again (they are said once per process)."""
    d = tmp_path / "machine"
    monkeypatch.setattr(fsutil, "MACHINE_DIR", d)
    knob = tmp_path / "drop_caches"
    knob.write_text("0")
    monkeypatch.setattr(fsutil, "DROP_CACHES", knob)
    monkeypatch.setattr(scaffold, "_said", set())
    return d


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """A blkio directory with both throttle files and a /sys/dev/block that knows tmp_path's device."""
    root, block = tmp_path / "blkio", tmp_path / "block"
    root.mkdir()
    st = os.stat(tmp_path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    (block / dev).mkdir(parents=True)
    for f in diskcap.FILES:
        (root / f).write_text("")
    monkeypatch.setattr(diskcap, "BLKIO", root)
    monkeypatch.setattr(diskcap, "SYS_BLOCK", block)
    return root, block, dev


def _run(tmp_path, name="out", **opts):
    said = []
    env, rows = measure.run([APPROACHES["pytorch"]], get_model("tiny"),
                            measure.Options(out=tmp_path / name, repeats=2, disk_reference=False, progress=False,
                                            **opts), say=said.append)
    return env, rows, said


def test_a_run_says_once_at_its_start_what_it_does_to_the_machine_and_records_it(tmp_path, machine, monkeypatch):
    settled = []
    monkeypatch.setattr(fsutil, "settle", lambda: settled.append(1) or True)
    env, rows, said = _run(tmp_path)
    drop = [s for s in said if "drops the page cache of the whole machine" in s]
    assert len(drop) == 1 and said.index(drop[0]) < next(i for i, s in enumerate(said) if s.startswith("run "))
    # a drop before each save and before each round's disk reference (one approach: each repeat a round)
    assert env["drop_caches"] is True and [r["caches_dropped"] for r in rows] == [True, True] and len(settled) == 4
    assert env["disk_cap_Bps"] is None and all(r["disk_throttle_Bps"] is None for r in rows)


def test_each_preparation_is_turned_off_by_its_option(tmp_path, machine, monkeypatch):
    settled, trimmed = [], tmp_path / "trimmed"
    monkeypatch.setattr(fsutil, "settle", lambda: settled.append(1) or True)
    fake = tmp_path / "fstrim"  # a stand-in for fstrim(8) that only notes each call
    fake.write_text(f"#!/bin/sh\necho \"$1\" >> '{trimmed}'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(fsutil, "FSTRIM", str(fake))
    root = os.geteuid() == 0  # fsutil.trim trims only as root
    env, rows, said = _run(tmp_path, "drop-only", prepare=scaffold.parse_prepare("drop-caches"))
    assert env["trim"] is False and [r["free_space_trimmed"] for r in rows] == [False, False]
    # a drop before each save and before each round's disk reference
    assert not trimmed.exists() and len(settled) == 4 and not any("fstrim" in s for s in said)
    env, rows, said = _run(tmp_path, "trim-only", prepare=scaffold.parse_prepare("trim"))
    assert env["drop_caches"] is False and [r["caches_dropped"] for r in rows] == [False, False] and len(settled) == 4
    assert env["trim"] is root and [r["free_space_trimmed"] for r in rows] == [root, root]
    assert trimmed.exists() == root and not any("drop_caches" in s for s in said)
    env, rows, said = _run(tmp_path, "none", prepare=scaffold.parse_prepare("none"))
    assert (env["drop_caches"], env["trim"]) == (False, False) and len(settled) == 4
    assert "this run changes nothing on the machine outside its own files" in " ".join(said)
    with pytest.raises(UserError, match="no such preparation fsck"):
        scaffold.parse_prepare("trim,fsck")


def test_the_training_loops_drop_the_caches_only_as_asked(tmp_path, machine, monkeypatch):
    settled = []
    monkeypatch.setattr(fsutil, "settle", lambda: settled.append(1) or True)
    for prepare, n in (("none", 0), ("drop-caches,trim", 1)):
        opts = training.TrainingOptions(out=tmp_path, checkpoints=tmp_path / prepare / "c",
                                        results=tmp_path / prepare / "r.jsonl", repeats=1, loops=("accelerator",),
                                        device_s=0.001, prepare=scaffold.parse_prepare(prepare))
        env, rows = training.run_training([SAVERS["safetensors"]], get_model("tiny"), opts)
        assert env["drop_caches"] is bool(n) and env["trim"] is False and len(settled) == n
        assert rows[0]["verified"] and rows[0]["caches_dropped"] is bool(n) and rows[0]["free_space_trimmed"] is False
        assert rows[0]["busy"]["wall_s"] > 0


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from llama_ckpt import fsutil
    with fsutil.machine_lock(Path(sys.argv[1]), Path(sys.argv[2])):
        print("held", flush=True)
        time.sleep(60)
""")


def test_one_run_per_machine_whatever_its_output_directory(tmp_path, machine):
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "first"), str(machine)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"in use by another run \(pid {first.pid}, writing to "
                                            rf".*first\)"):
            _run(tmp_path, "second")
    finally:
        first.kill()
        first.wait()
    assert not (tmp_path / "second" / "results").exists()
    _env, rows, _said = _run(tmp_path, "third")  # the lock goes with its holder
    assert all(r["verified"] for r in rows)


CAP = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from llama_ckpt.bench import diskcap
    diskcap.BLKIO, diskcap.SYS_BLOCK = Path(sys.argv[1]), Path(sys.argv[2])
    with diskcap.capped(Path(sys.argv[3]), 200_000_000):
        print("capped", flush=True)
        time.sleep(60)
""")


def test_a_cap_left_by_a_killed_run_is_put_back_by_the_next_run(tmp_path, machine, cgroup):
    root, block, dev = cgroup
    (root / diskcap.FILES[1]).write_text(f"{dev} 5000000\n")  # a write throttle someone set before
    env = dict(os.environ, LLAMA_CKPT_MACHINE_DIR=str(machine))
    killed = subprocess.Popen([sys.executable, "-c", CAP, str(root), str(block), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == "capped"
        assert [(root / f).read_text() for f in diskcap.FILES] == [f"{dev} 200000000\n"] * 2
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert [(root / f).read_text() for f in diskcap.FILES] == [f"{dev} 200000000\n"] * 2  # a SIGKILL leaves it
    env, rows, said = _run(tmp_path)  # the next run, not capped
    assert [(root / f).read_text() for f in diskcap.FILES] == [f"{dev} 0\n", f"{dev} 5000000\n"]
    assert any(f"run {killed.pid} ended without lifting its cap" in s and "put back" in s for s in said)
    assert not (machine / diskcap.STATE_NAME).exists()
    assert env["disk_throttle_found"] == {"device": dev, "read_bps": 0, "write_bps": 5_000_000}


def test_a_leftover_cap_changed_since_is_left_as_it_is(tmp_path, machine, cgroup):
    root, _block, dev = cgroup
    machine.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (machine / diskcap.STATE_NAME).write_text(
        f'{{"device": "{dev}", "bps": 1000, "before_bps": [0, 0], "pid": {int(gone.stdout)}, '
        f'"files": ["{root / diskcap.FILES[0]}", "{root / diskcap.FILES[1]}"]}}')
    (root / diskcap.FILES[0]).write_text(f"{dev} 7\n")  # someone else's since
    said = []
    diskcap.restore_left(said.append)
    assert (root / diskcap.FILES[0]).read_text() == f"{dev} 7\n" and "left as it is" in said[0]
    assert not (machine / diskcap.STATE_NAME).exists()


def test_a_cap_state_of_this_run_itself_is_not_taken_for_a_leftover(tmp_path, machine, cgroup):
    root, _block, dev = cgroup
    with diskcap.capped(tmp_path, 100_000_000):
        assert diskcap.restore_left(lambda s: None) is None  # the run's own, live cap
        assert (root / diskcap.FILES[0]).read_text() == f"{dev} 100000000\n"
        assert (machine / diskcap.STATE_NAME).exists()
    assert not (machine / diskcap.STATE_NAME).exists() and (root / diskcap.FILES[0]).read_text() == f"{dev} 0\n"


def test_an_uncapped_run_on_a_throttled_disk_says_so_in_every_row(tmp_path, machine, cgroup):
    root, _block, dev = cgroup
    (root / diskcap.FILES[1]).write_text(f"{dev} 300000000\n")
    env, rows, said = _run(tmp_path)
    assert env["disk_cap_Bps"] is None and env["disk_throttle_found"]["write_bps"] == 300_000_000
    assert [r["disk_throttle_Bps"] for r in rows] == [300_000_000] * 2
    assert any("throttled at 300 MB/s by a cap this run did not set" in s for s in said)


def test_every_row_says_how_busy_the_machine_was_beside_it(tmp_path, machine):
    _env, rows, _said = _run(tmp_path)
    for r in rows:
        for step in ("busy_save", "busy_load"):
            b = r[step]
            assert set(b) == {"others_cpu_s", "steal_s", "wall_s", "cores", "busy"}
            assert b["wall_s"] > 0 and b["cores"] == os.cpu_count() and isinstance(b["busy"], bool)
    # another process (not this run's: its parent has exited) burning a core beside the block marks it busy
    spin = subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'import time\nt = time.time()\n"
                                       "while time.time() - t < 3: pass' >/dev/null 2>&1 &"])
    assert spin.returncode == 0
    time.sleep(0.3)
    with MachineBusy() as busy:
        time.sleep(1.5)
    assert busy.result["others_cpu_s"] >= 0.5 and busy.result["busy"], busy.result  # half a core, on any machine


def test_busy_counts_the_machine_less_this_run_and_its_live_processes(monkeypatch):
    # the arithmetic on fixed counters: 10 ms ticks; this process 1 s of CPU, a live writer child 0.5 s (0.25 s
    # of it before the block), a child gone in the block (its 0.5 s before it, counted again by whoever waited
    # for it), the machine 3 s busy and 0.1 s stolen over 2 s of wall time on 2 cores
    from llama_ckpt import recorders

    ticks, own, kids, clock = iter([(1000, 50), (1300, 60)]), iter([10.0, 11.0]), \
        iter([{7: 0.25, 9: 0.5}, {7: 0.75, 8: 0.25}]), iter([100.0, 102.0])
    monkeypatch.setattr(recorders, "_machine_ticks", lambda: next(ticks))
    monkeypatch.setattr(recorders, "cpu_seconds", lambda: next(own))
    monkeypatch.setattr(recorders, "_descendants_cpu", lambda: next(kids))
    monkeypatch.setattr(recorders.time, "perf_counter", lambda: next(clock, 102.0))  # others may read it after
    monkeypatch.setattr(recorders.os, "sysconf", lambda name: 100)
    monkeypatch.setattr(recorders.os, "cpu_count", lambda: 2)
    with MachineBusy() as b:
        pass
    # others: 3 s of the machine less 1 s (this process) less 0.5 + 0.25 s (its children in the block), with
    # the gone child's 0.5 s before the block back (the waiter's count has all of it)
    assert b.result == {"others_cpu_s": 1.75, "steal_s": 0.1, "wall_s": 2.0, "cores": 2, "busy": True}


def test_a_live_childs_count_has_the_processes_it_waited_for():
    # a fork server's ranks: started and reaped by a child of this process, gone when the block ends
    from llama_ckpt import recorders

    code = ("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'import time\\nt = time.process_time()"
            "\\nwhile time.process_time() - t < 0.6: pass'], check=True)\nprint('reaped', flush=True)\n"
            "sys.stdin.read()")
    server = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "reaped"
        assert recorders._descendants_cpu()[server.pid] >= 0.6  # its own start-up too
    finally:
        server.stdin.close()
        server.wait()


def test_the_notebooks_default_to_the_runs_preparation():
    import nbformat

    from llama_ckpt.study.phases import PHASES
    from llama_ckpt.suite.runner import NOTEBOOKS

    want = f'PREPARE: str = "{",".join(scaffold.DEFAULT_PREPARE)}"'
    for p in PHASES.values():
        cell = next(c for c in nbformat.read(NOTEBOOKS / f"{p.slug}.ipynb", as_version=4).cells
                    if "parameters" in c.metadata.get("tags", []))
        assert any(line.startswith(want + "  # ") for line in cell.source.splitlines()), p.slug


def test_the_comparison_table_marks_rows_measured_beside_other_work_or_on_a_throttled_disk():
    from llama_ckpt.results import comparison_table, measurement_row

    def row(repeat, busy_load, throttle=None):
        return measurement_row(approach="pytorch", repeat=repeat, model="tiny", tensor_set="t",
                               stored_dtype="float16", save_s=1.0, load_s=1.0, bytes_on_disk=10, bytes_apparent=10,
                               n_files=1, verified=True, load_cold=True, payload_bytes=10,
                               busy_save={"busy": False}, busy_load={"busy": busy_load}, disk_throttle_Bps=throttle)
    quiet = comparison_table([row(1, False), row(2, False)])
    assert "other work" not in quiet and "throttled" not in quiet
    marked = comparison_table([row(1, False), row(2, True, 300_000_000)])
    assert "1 of 2 rows, read them with care: pytorch #2 (load)" in marked
    assert "throttled at 300 MB/s" in marked
