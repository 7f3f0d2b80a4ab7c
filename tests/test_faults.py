"""Fault injection: every checkpoint is complete and verified, or clearly not
a checkpoint. The numbers refer to the issue's list of faults."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque

import pytest
import torch

from llama_ckpt import checkpoint, fsutil
from llama_ckpt.bench import faults, measure, scaffold
from llama_ckpt.checkpoint import COMMIT
from llama_ckpt.formats import tensorstore as tensorstore_format
from llama_ckpt.formats.tensorstore import TensorStoreZarr
from llama_ckpt.registry import APPROACHES, names, variant
from llama_ckpt.store import TMP_TAG
from llama_ckpt.store.local import LocalDir
from llama_ckpt.errors import UserError
from llama_ckpt.verify import verify
from llama_ckpt.model import get_model

from .conftest import clone
from .helpers import cli, cli_here

SINGLE = names()
TS = [n for n in SINGLE if isinstance(APPROACHES[n], TensorStoreZarr)]


# 1. SIGKILL in the middle of a save ---------------------------------------------

SAVER = """
import sys
from llama_ckpt.registry import APPROACHES
from llama_ckpt.model import get_model
sd = get_model("small").materialize()
print("saving", flush=True)
APPROACHES[sys.argv[1]].save(sd, sys.argv[2])
print("saved", flush=True)
"""


def _bytes_in(d) -> int:
    """Bytes of the files under ``d`` while a save writes there (TensorStore's
    ``.__lock`` files come and go between listing and stat)."""
    n = 0
    for f in d.rglob("*"):
        try:
            n += f.stat().st_size if f.is_file() else 0
        except FileNotFoundError:
            pass
    return n


@pytest.mark.parametrize("name", ["pytorch", "tensorstore", "ts+ocdbt"])
def test_sigkill_mid_save_leaves_no_checkpoint(tmp_path, name):
    final = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SAVER, name, str(final)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until the save has written something
            tmps = list(tmp_path.glob(f"ckpt{TMP_TAG}*"))
            if tmps and _bytes_in(tmps[0]) > (1 << 20):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the save never started writing")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert not final.exists(), "a killed save must not leave a checkpoint at the final path"
    (leftover,) = tmp_path.glob(f"ckpt{TMP_TAG}*")
    r = cli_here("verify", str(leftover))
    assert r.returncode == 1 and "incomplete checkpoint" in r.stdout
    with pytest.raises(UserError, match="incomplete"):
        APPROACHES[name].load(leftover)
    # a later run on the same place removes the stale temporary and says so
    said = []
    measure.run([APPROACHES["pytorch"]], get_model("tiny"),
                measure.Options(out=tmp_path / "out", repeats=1, progress=False, disk_reference=False,
                                checkpoints=tmp_path / "run"), say=said.append)
    assert not leftover.exists() and any("stale temporary" in s and str(leftover) in s for s in said)


def test_a_checkpoint_without_its_commit_marker_is_never_loaded(tmp_path, tiny_sd):
    APPROACHES["ts+chunks"].save(clone(tiny_sd), tmp_path / "c")
    (tmp_path / "c" / COMMIT).unlink()
    with pytest.raises(UserError, match="no commit marker"):
        APPROACHES["ts+chunks"].load(tmp_path / "c")
    r = cli_here("verify", str(tmp_path / "c"))
    assert r.returncode == 1 and "no commit marker" in r.stdout


# 2. Disk full in the middle of a save -------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}): disk-full test skipped")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_mid_save_is_an_error_row_and_the_partial_files_go(tmp_path, small_tmpfs, monkeypatch):
    # The up-front free-space check would refuse; skip it, as if another
    # process filled the disk after the check.
    monkeypatch.setattr(scaffold, "check_disk", lambda *a, **k: {})
    results = tmp_path / "results.jsonl"
    env, rows = measure.run([APPROACHES["tensorstore"], APPROACHES["pytorch"]], get_model("tiny"),
                            measure.Options(out=small_tmpfs, repeats=1, progress=False, disk_reference=False,
                                            results=results))
    full, ok = sorted(rows, key=lambda r: r["approach"] != "tensorstore")
    assert full["error"] and "disk full" in full["error"] and full["verified"] is False
    assert ok["verified"] and ok["error"] is None  # fp16 (0.46 MB) still fits
    left = [p for p in small_tmpfs.rglob("*") if p.is_file()]
    assert left == [], f"partial files left: {left}"
    written = [json.loads(l) for l in results.read_text().splitlines()]
    assert sorted(r.get("approach") for r in written if r["record"] == "measurement") == ["pytorch", "tensorstore"]


# 3. One flipped byte ------------------------------------------------------------

@pytest.mark.parametrize("name", SINGLE)
def test_a_flipped_byte_is_caught_and_the_tensor_named(tmp_path, tiny_sd, name):
    out = faults.probe(APPROACHES[name], "flipped byte", tmp_path, tiny_sd)
    assert out.result in (faults.FORMAT_RAISES, faults.ONLY_DIGESTS), out
    assert any(out.verify_said.startswith(k + " ") for k in tiny_sd), out.verify_said
    r = cli_here("verify", str(tmp_path / f"{name}-flipped-byte"))
    assert r.returncode == 1 and "NOT OK" in r.stdout and out.verify_said.split(" ")[0] in r.stdout


def test_verify_exits_zero_on_every_good_checkpoint(tmp_path, tiny_sd):
    for name in SINGLE:
        APPROACHES[name].save(clone(tiny_sd), tmp_path / name)
    r = cli_here("verify", *[str(tmp_path / n) for n in SINGLE])
    assert r.returncode == 0, r.stdout
    assert r.stdout.count(": OK: ") == len(SINGLE)


# 4. Deleted and truncated files -------------------------------------------------

@pytest.mark.parametrize("name,fault", [
    ("tensorstore", "deleted data file"),       # a deleted chunk file
    ("ts+ocdbt", "deleted OCDBT manifest"),
    ("tensorstore", "truncated file"),          # a truncated chunk
    ("pytorch", "truncated file"),              # a truncated .pth
    ("pytorch", "deleted data file"),
    ("ts+ocdbt", "deleted data file"),
    ("safetensors", "truncated file"),
])
def test_missing_or_truncated_files_are_clear_errors_naming_the_file(tmp_path, tiny_sd, name, fault):
    out = faults.probe(APPROACHES[name], fault, tmp_path, tiny_sd)
    assert out.result == faults.FORMAT_RAISES, out  # strict reads: never zeros
    path = tmp_path / f"{name}-{fault.replace(' ', '-')}"
    assert str(path) in out.verify_said and "unreadable" in out.verify_said


# 5. A malicious pickle --------------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_MARKER']}",))


MALICIOUS = """
import os, sys
from llama_ckpt.registry import APPROACHES
try:
    APPROACHES["pytorch"].load(sys.argv[1])
    print("LOADED")
except Exception as exc:
    print("REFUSED", type(exc).__name__)
"""


def test_a_malicious_pth_is_refused_and_never_runs(tmp_path, monkeypatch, tiny_sd):
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    APPROACHES["pytorch"].save(clone(tiny_sd), tmp_path / "c")
    torch.save({"model.norm.weight": Payload()}, tmp_path / "c" / "model.pth")  # replaced after commit
    for force in ("0", "1"):
        env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=force, PAYLOAD_MARKER=str(marker))
        r = subprocess.run([sys.executable, "-c", MALICIOUS, str(tmp_path / "c")], capture_output=True, text=True,
                           env=env, timeout=120)
        assert "REFUSED" in r.stdout, (force, r.stdout, r.stderr)
        assert not marker.exists(), f"the payload ran (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD={force})"
    r = cli("verify", str(tmp_path / "c"), env=dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"))
    assert r.returncode == 1 and not marker.exists()


# 6. An all-zero tensor under strict reading ---------------------------------------

@pytest.mark.parametrize("name", TS)
def test_an_all_zero_tensor_round_trips_under_strict_reads(tmp_path, tiny_sd, name):
    sd = clone(tiny_sd)
    sd["model.norm.weight"].zero_()
    sd["lm_head.weight"].zero_()
    a = APPROACHES[name]
    a.save(clone(sd), tmp_path / "c")
    loaded = a.load(tmp_path / "c")
    assert torch.equal(loaded["lm_head.weight"], sd["lm_head.weight"].to(a.stored_dtype))
    assert verify(tmp_path / "c").ok


# 7. Two runs on one output directory ------------------------------------------------

def test_a_second_run_on_the_same_machine_refuses_naming_the_first(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "llama_ckpt", "run", "--approach", "all", "--model",
                              "tiny", "--repeats", "1", "--out", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        lock = fsutil.MACHINE_DIR / fsutil.LOCK_NAME
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.05)
        second = cli_here("run", "--approach", "pytorch", "--model", "tiny", "--repeats", "1", "--out",
                          str(tmp_path / "elsewhere"))
        assert second.returncode == 2 and f"in use by another run (pid {first.pid}, writing to {out.resolve()})" \
            in second.stderr
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    (results,) = (out / "results").glob("*.jsonl")
    rows = [json.loads(l) for l in results.read_text().splitlines()]
    assert sorted(r["approach"] for r in rows if r["record"] == "measurement") == sorted(names())
    assert all(r["verified"] for r in rows if r["record"] == "measurement")
    assert rows[-1]["record"] == "end" and rows[-1]["complete"] is True


# 8. A results file with a corrupt line ----------------------------------------------

def test_compare_names_a_corrupt_line_and_uses_the_rest(tmp_path):
    r = cli("run", "--approach", "pytorch,tensorstore", "--model", "tiny", "--repeats", "1", "--out", str(tmp_path))
    assert r.returncode == 0
    (results,) = (tmp_path / "results").glob("*.jsonl")
    lines = results.read_text().splitlines()
    lines.insert(2, '{"record": "measurement", "approach": "tensorst')  # a torn write
    results.write_text("\n".join(lines) + "\n")
    c = cli("compare", str(results))
    assert c.returncode == 0
    assert f"{results}:3: skipped corrupt line" in c.stderr
    assert "pytorch" in c.stdout and "tensorstore" in c.stdout


def test_an_interrupted_run_is_flagged_by_compare(tmp_path):
    r = cli("run", "--approach", "pytorch", "--model", "tiny", "--repeats", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (results,) = (tmp_path / "results").glob("*.jsonl")
    lines = results.read_text().splitlines()
    results.write_text("\n".join(l for l in lines if '"record": "end"' not in l) + "\n")  # as after SIGKILL
    c = cli("compare", str(results))
    assert c.returncode == 0 and "is incomplete" in c.stderr


# 9. Nonsense parameters --------------------------------------------------------------

@pytest.mark.parametrize("knobs", [dict(chunk_size=-1), dict(chunk_size=0), dict(chunk_size=1 << 50),
                                   dict(concurrency=0), dict(compression="gzip:42")])
def test_nonsense_sweep_values_are_refused_before_anything_is_written(tmp_path, knobs):
    with pytest.raises(UserError, match="bad knob"):
        variant("ts+chunks", **knobs)
    assert not any(tmp_path.iterdir())


def test_repeats_zero_writes_nothing(tmp_path):
    r = cli_here("run", "--model", "tiny", "--repeats", "0", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and not (tmp_path / "o").exists()


def test_a_failed_saves_staging_goes_even_while_a_writers_thread_still_writes_into_it(tmp_path, monkeypatch):
    # TensorStore's I/O threads can still be finishing chunks of a failed write when its staging is removed: the
    # removal meets a directory that is not empty, or a file put back after it looked gone; both are removed again
    loc = LocalDir(tmp_path / "ckpt")
    staged = loc.stage()
    (staged.path / "sub").mkdir()
    (staged.path / "sub" / "chunk").write_bytes(b"x")
    real, calls = fsutil.remove, []

    def racing(path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(path))
        real(path)
        if len(calls) == 2:  # a late chunk written right after the tree was removed
            (staged.path / "sub").mkdir(parents=True)
            (staged.path / "sub" / "late").write_bytes(b"y")
    monkeypatch.setattr(fsutil, "remove", racing)
    loc.discard(staged)
    assert not staged.path.exists() and len(calls) == 3
    denied = []

    def deny(p):
        denied.append(p)
        raise OSError(errno.EACCES, "denied", str(p))
    monkeypatch.setattr(fsutil, "remove", deny)
    again = loc.stage()
    with pytest.raises(OSError, match="denied"):  # any other error is not waited out
        loc.discard(again)
    assert len(denied) == 1


def test_a_failed_tensorstore_write_waits_for_the_writes_still_in_flight():
    ended = []

    class Write:
        def __init__(self, name, fails):
            self.name, self.fails = name, fails

        def result(self):
            ended.append(self.name)
            if self.fails:
                raise ValueError(f"{self.name}: no space left on device")
    inflight = deque([(Write("a", True), 1), (Write("b", False), 1), (Write("c", True), 1)])
    tensorstore_format._drain(inflight)
    assert ended == ["a", "b", "c"] and not inflight


def test_a_staging_that_cannot_be_removed_leaves_the_saves_own_error_raised(tmp_path, monkeypatch):
    loc = LocalDir(tmp_path / "ckpt")

    class Broken(Exception):
        pass

    def write(state_dict, staged, steps, progress):
        (staged.path / "part").write_bytes(b"x")
        raise Broken("the format failed")
    fmt = APPROACHES["pytorch"]
    monkeypatch.setattr(fmt, "write", write)
    monkeypatch.setattr(LocalDir, "discard", lambda self, staged: (_ for _ in ()).throw(
        OSError(errno.EBUSY, "busy", str(staged.path))))
    with pytest.raises(Broken, match="the format failed") as got:
        checkpoint.save(fmt, {"w": torch.zeros(4)}, loc)
    if hasattr(got.value, "__notes__"):
        assert "could not be removed" in got.value.__notes__[0]


def test_a_file_renamed_away_while_the_staging_is_removed_is_waited_out(tmp_path, monkeypatch):
    loc = LocalDir(tmp_path / "ckpt")
    staged = loc.stage()
    real, calls = fsutil.remove, []

    def renamed(path):
        calls.append(path)
        if len(calls) == 1:  # a writer's temporary renamed between the listing and its unlink
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path / ".tmp"))
        real(path)
    monkeypatch.setattr(fsutil, "remove", renamed)
    loc.discard(staged)
    assert not staged.path.exists() and len(calls) == 2
