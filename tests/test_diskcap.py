"""The disk cap (bench.diskcap) on a stand-in cgroup tree: the machine's own
throttle is never touched by a test, so tests running beside it keep their disk."""

import os

import pytest

from llama_ckpt.bench import diskcap
from llama_ckpt.errors import UserError


def _dev(path):
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A blkio directory with both throttle files (the write one already holding a rule) and a /sys/dev/block
    that knows tmp_path's device."""
    root, block = tmp_path / "blkio", tmp_path / "block"
    root.mkdir()
    dev = _dev(tmp_path)
    (block / dev).mkdir(parents=True)
    (root / diskcap.FILES[0]).write_text("")
    (root / diskcap.FILES[1]).write_text(f"{dev} 5000000\n")
    monkeypatch.setattr(diskcap, "BLKIO", root)
    monkeypatch.setattr(diskcap, "SYS_BLOCK", block)
    return root, dev


def test_the_cap_is_set_on_the_disk_of_the_path_and_the_values_before_come_back(fake, tmp_path):
    root, dev = fake
    with pytest.raises(RuntimeError):
        with diskcap.capped(tmp_path / "not" / "made" / "yet", 200_000_000) as cap:
            assert cap == {"device": dev, "bps": 200_000_000, "before_bps": [0, 5_000_000]}
            assert [(root / f).read_text() for f in diskcap.FILES] == [f"{dev} 200000000\n"] * 2
            raise RuntimeError("a run that fails still lifts the cap")
    assert [(root / f).read_text() for f in diskcap.FILES] == [f"{dev} 0\n", f"{dev} 5000000\n"]


def test_a_cap_that_cannot_be_set_stops_with_one_line_naming_why(fake, tmp_path, monkeypatch):
    root, _ = fake
    with pytest.raises(UserError, match="positive rate"):
        with diskcap.capped(tmp_path, 0):
            pass
    (root / diskcap.FILES[1]).unlink()
    with pytest.raises(UserError, match="no cgroup v1 blkio throttle here"):
        with diskcap.capped(tmp_path, 1):
            pass
    monkeypatch.setattr(diskcap, "SYS_BLOCK", tmp_path / "none")
    with pytest.raises(UserError, match="on no block device"):
        diskcap.device_of(tmp_path)


def test_a_run_under_a_cap_records_it_and_lifts_it(fake, tmp_path):
    from llama_ckpt.bench import measure
    from llama_ckpt.model import get_model
    from llama_ckpt.registry import resolve

    root, dev = fake
    opts = measure.Options(out=tmp_path / "out", repeats=1, disk_reference=False, disk_cap_Bps=300_000_000)
    env, rows = measure.run(resolve("safetensors"), get_model("tiny"), opts)
    assert env["disk_cap_Bps"] == 300_000_000 and rows[0]["verified"]
    assert (root / diskcap.FILES[0]).read_text() == f"{dev} 0\n"


def test_a_cap_the_kernel_refuses_stops_with_one_line_and_leaves_nothing_set(fake, tmp_path, monkeypatch):
    root, dev = fake
    real = type(root).write_text

    def refuse(self, text, *a, **k):
        if self.name == diskcap.FILES[1] and text.endswith(" 7\n"):
            raise PermissionError(1, "Operation not permitted")
        return real(self, text, *a, **k)

    monkeypatch.setattr(type(root), "write_text", refuse)
    with pytest.raises(UserError, match=r"the kernel refused blkio.throttle.write_bps_device \(Operation not"):
        with diskcap.capped(tmp_path, 7):
            pass
    assert [(root / f).read_text() for f in diskcap.FILES] == [f"{dev} 0\n", f"{dev} 5000000\n"]


def test_sigterm_while_capped_lifts_the_cap(fake, tmp_path):
    import signal

    root, dev = fake
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        with diskcap.capped(tmp_path, 9):
            os.kill(os.getpid(), signal.SIGTERM)
    assert [(root / f).read_text() for f in diskcap.FILES] == [f"{dev} 0\n", f"{dev} 5000000\n"]
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler before is back
