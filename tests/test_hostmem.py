"""Free memory kept from a VM's host (bench/hostmem): set, touched, put back, and what a run records and says.
Every test works on a stand-in for the kernel's parameters, never the machine's own."""

import json
import os
import subprocess
import sys

import pytest

from llama_ckpt import fsutil
from llama_ckpt.bench import hostmem, measure, scaffold
from llama_ckpt.model import get_model
from llama_ckpt.registry import APPROACHES

BUDDY = "Node 0, zone   Normal    106     51     11     16    326   4857   4710   2844   1387    593   3522\n"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A page_reporting parameter directory at order 9 with a reported-KiB count, a buddyinfo of orders 0-10,
    this test's own machine directory, and 4 MiB to touch (the machine's available memory is what a run touches)."""
    rep = tmp_path / "page_reporting"
    rep.mkdir()
    (rep / "page_reporting_order").write_text("9\n")
    (rep / "reported_kib").write_text("1234\n")
    buddy = tmp_path / "buddyinfo"
    buddy.write_text(BUDDY)
    balloon = tmp_path / "virtio_balloon"
    (balloon / "virtio0").mkdir(parents=True)
    monkeypatch.setattr(hostmem, "REPORTING", rep)
    monkeypatch.setattr(hostmem, "BUDDYINFO", buddy)
    monkeypatch.setattr(hostmem, "BALLOON", balloon)
    monkeypatch.setattr(fsutil, "MACHINE_DIR", tmp_path / "machine")
    monkeypatch.setattr(scaffold, "_said", set())
    monkeypatch.setattr(hostmem, "hold_size", lambda: 4 << 20)
    return rep / "page_reporting_order"


def _left(state, record):
    """A state file as a run of this user's writes it."""
    state.write_text(json.dumps(record))
    state.chmod(0o644)


def test_the_order_goes_above_the_largest_block_for_the_block_and_comes_back(kernel, tmp_path):
    assert hostmem.off_order() == 11  # 11 orders in buddyinfo: 0-10
    with hostmem.held(print) as got:
        assert kernel.read_text().strip() == "11"
        state = json.loads((tmp_path / "machine" / hostmem.STATE_NAME).read_text())
        assert state["before"] == 9 and state["set"] == 11 and state["pid"] == os.getpid()
        assert hostmem.describe()["held"] is True
    assert got["reporting_order_found"] == 9 and got["reporting_order_set"] == 11
    assert got["touched_bytes"] == 4 << 20 and got["touch_s"] >= 0 and got["reported_kib_before"] == 1234
    assert kernel.read_text().strip() == "9" and not (tmp_path / "machine" / hostmem.STATE_NAME).exists()
    assert hostmem.describe() == {"order": 9, "reported_kib": 1234, "held": False}


def test_an_error_in_the_block_puts_the_order_back(kernel):
    with pytest.raises(RuntimeError):
        with hostmem.held(print):
            raise RuntimeError("a failed run")
    assert kernel.read_text().strip() == "9"


def test_a_run_inside_one_that_holds_it_leaves_the_order_to_its_holder(kernel):
    with hostmem.held(print):
        with hostmem.held(print) as inner:
            assert inner == {"held_by": os.getpid(), "reporting_order_found": 9, "reporting_order_set": 11}
        assert kernel.read_text().strip() == "11"  # still the outer one's
    assert kernel.read_text().strip() == "9"


def test_without_the_right_to_change_it_the_run_says_so_and_records_why(kernel, monkeypatch):
    monkeypatch.setattr(hostmem.os, "access", lambda path, mode: False)
    said = []
    with hostmem.held(said.append) as got:
        assert kernel.read_text().strip() == "9"
    assert "not writable" in got["not_held"] and got["reporting_order_found"] == 9
    assert len(said) == 1 and said[0].startswith("memory: ") and "\n" not in said[0]


def test_no_page_reporting_means_nothing_to_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(hostmem, "REPORTING", tmp_path / "absent")
    with hostmem.held(print) as got:
        assert got is None
    assert hostmem.describe() is None


def test_a_killed_runs_order_is_put_back_by_the_next_run_and_a_changed_one_left(kernel, tmp_path):
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    state = fsutil.shared_dir(tmp_path / "machine") / hostmem.STATE_NAME
    left = {"before": 9, "set": 11, "pid": gone, "started": 1.0}
    _left(state, left)
    kernel.write_text("11\n")
    said = []
    assert hostmem.restore_left(said.append) == left
    assert kernel.read_text().strip() == "9" and not state.exists() and "put back page_reporting_order 9" in said[0]
    _left(state, left)
    kernel.write_text("10\n")  # someone else's since
    hostmem.restore_left(said.append)
    assert kernel.read_text().strip() == "10" and "left page_reporting_order as it is" in said[1]
    _left(state, dict(left, pid=os.getpid(), started=hostmem._started(os.getpid())))  # this run's own
    assert hostmem.restore_left(said.append) is None and state.exists() and len(said) == 2
    _left(state, dict(left, pid=os.getpid(), started=1.0))  # this pid, reused: a leftover
    kernel.write_text("11\n")
    assert hostmem.restore_left(said.append)["started"] == 1.0 and kernel.read_text().strip() == "9"
    # a live process that is neither this run nor its ancestor holds no lock here: a leftover (its pid reused)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _left(state, dict(left, pid=other.pid, started=hostmem._started(other.pid)))
        kernel.write_text("11\n")
        assert hostmem.restore_left(said.append)["pid"] == other.pid and kernel.read_text().strip() == "9"
    finally:
        other.kill()
        other.wait()


def test_a_state_file_others_could_have_written_is_not_used_and_names_no_file_to_write(kernel, tmp_path):
    state = fsutil.shared_dir(tmp_path / "machine") / hostmem.STATE_NAME
    decoy = tmp_path / "decoy"
    decoy.write_text("11\n")
    state.write_text(json.dumps({"before": 0, "set": 11, "knob": str(decoy), "pid": 1 << 30}))
    state.chmod(0o666)
    said = []
    assert hostmem.restore_left(said.append) is None and "not used" in said[0] and not state.exists()
    _left(state, {"before": 9, "set": 11, "knob": str(decoy), "pid": 1 << 30})
    kernel.write_text("11\n")
    hostmem.restore_left(said.append)
    assert decoy.read_text() == "11\n" and kernel.read_text().strip() == "9"  # the kernel's knob, never the file's


def test_a_kernel_that_refuses_the_order_leaves_nothing_held_behind(kernel, tmp_path, monkeypatch):
    def refuse(knob, order):
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(hostmem, "_set_order", refuse)
    said = []
    with hostmem.held(said.append) as got:
        assert not (tmp_path / "machine" / hostmem.STATE_NAME).exists()  # no hold for a phase to find
        with hostmem.held(said.append) as inner:
            assert "held_by" not in inner
    assert "refused page_reporting_order 11" in got["not_held"] and kernel.read_text().strip() == "9"
    assert said[0].startswith("memory: the kernel refused")


def test_a_kernel_without_a_reporting_device_reports_nothing(kernel, tmp_path, monkeypatch):
    kernel.write_text("-1\n")  # the module built in, no virtio_balloon registered: bare metal
    assert hostmem.found() is None and hostmem.describe() is None
    kernel.write_text("9\n")
    monkeypatch.setattr(hostmem, "BALLOON", tmp_path / "no-balloon")  # no device to report through
    assert hostmem.found() is None


def test_an_order_no_block_reaches_already_is_nothing_to_hold(kernel, tmp_path):
    kernel.write_text("11\n")  # older kernels start at MAX_ORDER: nothing is reported
    with hostmem.held(print) as got:
        assert got is None and not (tmp_path / "machine" / hostmem.STATE_NAME).exists()
    assert kernel.read_text().strip() == "11"


def test_the_touch_keeps_every_step_until_the_last_is_touched(monkeypatch):
    events = []

    class Map(bytearray):
        def __init__(self, fd, n, flags=0):
            super().__init__(n)
            events.append(("map", n))

        def close(self):
            events.append(("free", len(self)))
    monkeypatch.setattr(hostmem.mmap, "mmap", Map)
    hostmem.touch(5 << 20, step=2 << 20)
    assert events == [("map", 2 << 20), ("map", 2 << 20), ("map", 1 << 20),
                      ("free", 2 << 20), ("free", 2 << 20), ("free", 1 << 20)]


def test_a_run_holds_the_memory_by_default_records_it_and_says_how_to_turn_it_off(kernel, tmp_path):
    said = []
    env, rows = measure.run([APPROACHES["pytorch"]], get_model("tiny"),
                            measure.Options(out=tmp_path / "out", repeats=1, disk_reference=False, progress=False),
                            say=said.append)
    assert rows and rows[0]["verified"]
    mem = env["host_memory"]
    assert mem["reporting_order_found"] == 9 and mem["reporting_order_set"] == 11
    assert mem["touched_bytes"] == 4 << 20
    assert any("keeps the machine's free memory from its host" in s and "without hold-memory" in s for s in said)
    assert kernel.read_text().strip() == "9"
    env, _ = measure.run([APPROACHES["pytorch"]], get_model("tiny"),
                         measure.Options(out=tmp_path / "out2", repeats=1, disk_reference=False, progress=False,
                                         prepare=("drop-caches",)), say=said.append)
    assert env["host_memory"] == {"order": 9, "reported_kib": 1234, "held": False}  # what the run met


def test_the_memory_touched_is_what_the_machine_has_available_less_a_spare(monkeypatch):
    class Mem:
        available = 10 << 30
    monkeypatch.setattr(hostmem.psutil, "virtual_memory", lambda: Mem)
    monkeypatch.setattr(hostmem, "_cgroup_room", lambda: None)  # no cgroup limit
    assert hostmem.hold_size() == (10 << 30) - hostmem.SPARE
    monkeypatch.setattr(hostmem, "_cgroup_room", lambda: 4 << 30)  # a cgroup's limit is the tighter one
    assert hostmem.hold_size() == (4 << 30) - hostmem.SPARE
    Mem.available = hostmem.SPARE // 2
    assert hostmem.hold_size() == 0


def test_a_run_killed_while_holding_leaves_its_order_for_the_next_to_put_back(kernel, tmp_path):
    child = ("import sys, time\n"
             "from pathlib import Path\n"
             "from llama_ckpt.bench import hostmem\n"
             "hostmem.hold_size = lambda: 1 << 20\n"
             f"hostmem.BUDDYINFO, hostmem.BALLOON = Path({str(hostmem.BUDDYINFO)!r}), Path({str(hostmem.BALLOON)!r})\n"
             "with hostmem.held(print):\n"
             "    print('held', flush=True)\n"
             "    time.sleep(60)\n")
    env = dict(os.environ, LLAMA_CKPT_PAGE_REPORTING=str(kernel.parent),
               LLAMA_CKPT_MACHINE_DIR=str(tmp_path / "machine"))
    p = subprocess.Popen([sys.executable, "-c", child], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held" and kernel.read_text().strip() == "11"
    finally:
        p.kill()
        p.wait()
    said = []
    assert hostmem.restore_left(said.append)["pid"] == p.pid
    assert kernel.read_text().strip() == "9" and "put back page_reporting_order 9" in said[0]
    assert not (tmp_path / "machine" / hostmem.STATE_NAME).exists()
