"""Checkpoints inside a training loop (07-training) on the tiny model: every
saver's checkpoint holds the weights of the step it was taken at, not a later
one; referencing the source lets later steps in; a process killed mid-save
leaves no committed checkpoint and the previous one intact; the report's
rules; a model too big to train is skipped with the reason."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llama_ckpt import checkpoint, fsutil
from llama_ckpt.bench import training
from llama_ckpt.digests import check, expected_digests, tensor_digest
from llama_ckpt.errors import UserError
from llama_ckpt.bench.savers import SAVERS, Hooks, TensorStoreAsync
from llama_ckpt.model import get_model
from llama_ckpt.registry import variant
from llama_ckpt.report import training as report
from llama_ckpt.results import read_results
from llama_ckpt.store import LocalDir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trainer():
    t = training.Trainer(get_model("tiny"))
    t.step()
    return t


def _expected(sd):
    import torch

    return expected_digests(sd, {torch.float32})[torch.float32]


def _checkpoint_then_step(saver, trainer, loc, optimizer=False):
    """Checkpoint at step k with the background held until the loop has made
    step k+1; returns (what was loaded, step k's digests, step k+1's)."""
    sd = trainer.state_dict(optimizer)
    at_k = _expected(sd)
    go = threading.Event()
    hooks = Hooks(started=lambda: go.wait(60)) if saver.mode != "sync" else Hooks()
    pending = saver.start(sd, loc, {k: e.digest for k, e in at_k.items()}, hooks)
    trainer.gate = pending.gate  # a staging still going on is waited for before the update, as the loops do
    trainer.step()  # the loop goes on, updating the weights in place
    go.set()
    assert pending.wait(120) >= 0
    at_k1 = _expected(trainer.state_dict(optimizer))
    return saver.load(loc), at_k, at_k1


@pytest.mark.parametrize("optimizer", [False, True], ids=["model", "model+optimizer"])
@pytest.mark.parametrize("name", list(SAVERS))
def test_a_checkpoint_holds_the_weights_of_its_step_not_the_next(trainer, tmp_path, name, optimizer):
    saver = SAVERS[name]
    saver.prepare(LocalDir(tmp_path / "warm-up"))
    try:
        loaded, at_k, at_k1 = _checkpoint_then_step(saver, trainer, LocalDir(tmp_path / "ckpt"), optimizer)
    finally:
        saver.close()
    assert any(at_k[n].digest != at_k1[n].digest for n in at_k)  # the step changed the weights
    assert check(loaded, at_k).verified, check(loaded, at_k).summary()
    assert not check(loaded, at_k1).verified
    if optimizer:
        assert any(n.startswith("optimizer/") and n.endswith("/exp_avg_sq") for n in loaded)
    man = checkpoint.read_manifest(LocalDir(tmp_path / "ckpt"))
    assert man["saved_by"] == name and man["mode"] == saver.mode


def test_referencing_the_source_lets_the_next_step_into_the_checkpoint(trainer, tmp_path):
    """Why ts+best-async turns off can_reference_source_data_indefinitely:
    with it, TensorStore writes the loop's own arrays at the commit, after
    the loop has changed them."""
    leaky = TensorStoreAsync("ts-async-referencing", "test", variant("ts+best", commit_bytes=0))
    assert leaky.fmt.k.reference_source and not SAVERS["ts+best-async"].fmt.k.reference_source
    loaded, at_k, at_k1 = _checkpoint_then_step(leaky, trainer, LocalDir(tmp_path / "ckpt"))
    assert not check(loaded, at_k).verified  # not the weights of its step ...
    assert check(loaded, at_k1).verified  # ... but the next step's


def test_tensorstore_async_needs_one_transaction():
    with pytest.raises(ValueError, match="one transaction"):
        TensorStoreAsync("x", "test", SAVERS["ts+best"].fmt)  # ts+best commits in 1 GiB batches


def test_a_failed_background_write_removes_what_it_staged_and_says_why(trainer, tmp_path):
    saver = SAVERS["copy+safetensors-thread"]

    def boom():
        raise OSError(28, "No space left on device")
    loc = LocalDir(tmp_path / "ckpt")
    sd = trainer.state_dict()
    pending = saver.start(sd, loc, {k: e.digest for k, e in _expected(sd).items()}, Hooks(written=boom))
    with pytest.raises(OSError, match="No space left"):
        pending.wait(60)
    saver.close()
    assert not loc.exists() and not LocalDir(tmp_path).stale_saves()


@pytest.mark.parametrize("name,hook", [("copy+safetensors-thread", "written"), ("copy+pytorch-thread", "started"),
                                       ("fork+safetensors", "written"), ("copy+safetensors-process", "written"),
                                       ("ts+best-async", "written"), ("dcp-async", "written"),
                                       ("dcp-async-process", "written")])
def test_killed_mid_background_save_no_checkpoint_is_committed_and_the_previous_one_is_intact(tmp_path, name, hook):
    proc = subprocess.Popen([sys.executable, "-m", "tests.training_child", name, str(tmp_path), hook], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()  # "PAUSED": checkpoint 2 is in its background work
        assert line.strip() == "PAUSED", (line, proc.stderr.read() if proc.poll() is not None else "")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process and its writers (a forked child, DCP's process)
        proc.wait(30)
    with pytest.raises(UserError, match="no such checkpoint"):
        checkpoint.read_manifest(LocalDir(tmp_path / "ckpt-2"))
    assert any("ckpt-2" in str(s) for s in LocalDir(tmp_path).stale_saves())  # only a temporary is left
    saved = json.loads((tmp_path / "digests-1.json").read_text())
    loaded = SAVERS[name].load(LocalDir(tmp_path / "ckpt-1"))
    assert {k: tensor_digest(v) for k, v in loaded.items()} == saved


def test_run_training_measures_each_saver_and_verifies_every_checkpoint(tmp_path):
    savers = [SAVERS[n] for n in ("safetensors", "copy+safetensors-thread", "fork+safetensors")]
    opts = training.TrainingOptions(out=tmp_path, checkpoints=tmp_path / "ckpts", results=tmp_path / "r.jsonl",
                                    repeats=2, steps_before=1, steps_after=2, loops=("cpu",), optimizer=False)
    env, rows = training.run_training(savers, get_model("tiny"), opts)
    assert [(r["approach"], r["repeat"]) for r in rows] == [(s.name, k) for s in savers for k in (1, 2)]
    assert all(r["verified"] and r["error"] is None for r in rows)
    for r in rows:
        assert 0 < r["blocking_s"] <= r["durable_s"] + 1e-3 and r["segment_s"] >= r["durable_s"]
        assert len(r["steps_after_s"]) == 2 and len(r["steps_before_s"]) == 1  # steps until durable, then 2
        assert len(r["steps_after_cpu_s"]) == len(r["steps_after_s"]) and all(c > 0 for c in r["steps_after_cpu_s"])
        assert r["bytes_on_disk"] > 0 and r["load_s"] > 0 and r["peak_rss_bytes"] > 0
    assert all(r["writer_cpu_s"] is not None for r in rows if r["mode"] in ("fork", "thread"))
    assert [r["kept_bytes"] == r["checkpoint_bytes"] for r in rows] == [False, False, True, True, False, False]
    assert all(r["machine_used_bytes"] > 0 and r["cpu_segment_s"] > 0 for r in rows)
    loaded = read_results([tmp_path / "r.jsonl"])
    assert len(loaded.training) == 6 and loaded.ends[-1]["complete"] and not loaded.measurements
    assert not (tmp_path / "ckpts").exists()  # each checkpoint removed once checked
    table = report.training_table(rows)
    assert list(table.index) == [s.name for s in savers]
    assert (table["checkpoints verified"] == "2 of 2").all()
    assert set(report.ranking(rows)["saver"]) == {s.name for s in savers}


def test_a_writer_that_hangs_ends_its_savers_rows_with_an_error_and_the_phase_goes_on(tmp_path):
    import threading

    from llama_ckpt.bench.savers import StagedThread

    release = threading.Event()

    class Stuck(StagedThread):
        def _launch(self, state_dict, staged, pending):
            super()._launch(state_dict, staged, pending)
            return lambda: release.wait(60)  # a writer that never finishes while the loop waits

    stuck = Stuck("stuck", "a writer that hangs", SAVERS["safetensors"].fmt, "safetensors")
    opts = training.TrainingOptions(out=tmp_path, checkpoints=tmp_path / "ckpts", results=tmp_path / "r.jsonl",
                                    repeats=2, steps_before=1, steps_after=1, wait_timeout_s=1.0,
                                    loops=("accelerator",))
    said = []
    try:
        env, rows = training.run_training([stuck, SAVERS["safetensors"]], get_model("tiny"), opts, say=said.append)
    finally:
        release.set()
    assert [(r["approach"], r["repeat"], r["verified"]) for r in rows] == [
        ("stuck", 1, False), ("stuck", 2, False), ("safetensors", 1, True), ("safetensors", 2, True)]
    assert rows[0]["error"].startswith("hung: not durable 1 s after the call") and rows[0]["segment_s"] >= 1.0
    assert rows[1]["error"] == "skipped: checkpoint 1 of this saver hung"
    assert any("stuck (accelerator loop): hung" in s and "later checkpoints are skipped" in s for s in said)
    end = read_results([tmp_path / "r.jsonl"]).ends[-1]
    assert end["complete"] and end["writers_left_running"] == ["stuck (accelerator)"]
    assert report.training_table(rows).loc["stuck", "checkpoints verified"] == "0 of 2"  # the report reads them
    assert set(report.ranking(rows)["saver"]) <= {"stuck", "safetensors"}
    assert training.wait_limit(10) == training.WAIT_MIN_S and training.wait_limit(10**10) == pytest.approx(1000.0)


def test_every_checkpoint_starts_from_dropped_caches(tmp_path, monkeypatch):
    # As every save of the suite: the previous checkpoint was just removed, so the file system is written back and
    # its caches dropped (fsutil.settle) before each call, outside the timings; the rows and the run say so.
    events = []
    saver = SAVERS["safetensors"]
    start = type(saver).start
    monkeypatch.setattr(type(saver), "start", lambda self, *a, **k: events.append("start") or start(self, *a, **k))
    monkeypatch.setattr(fsutil, "settle", lambda: events.append("settle") or True)
    opts = training.TrainingOptions(out=tmp_path, checkpoints=tmp_path / "ckpts", results=tmp_path / "r.jsonl",
                                    repeats=2, steps_before=1, steps_after=1, loops=("accelerator",))
    env, rows = training.run_training([saver], get_model("tiny"), opts)
    assert events == ["settle", "start"] * 2
    assert [r["caches_dropped"] for r in rows] == [True, True] and all(r["verified"] for r in rows)
    assert env["drop_caches"] is os.access(fsutil.DROP_CACHES, os.W_OK)


def test_a_model_too_big_to_train_here_is_skipped_with_the_reason(tmp_path):
    opts = training.TrainingOptions(out=tmp_path, checkpoints=tmp_path / "c", results=tmp_path / "r.jsonl")
    env, rows = training.run_training(list(SAVERS.values()), get_model("open_llama_3b"), opts)
    assert rows == [] and "AdamW" in env["skipped"]["07-training"] and "GB" in env["skipped"]["07-training"]
    assert read_results([tmp_path / "r.jsonl"]).ends[-1]["complete"]
    assert "No checkpoint was taken in this run: training open_llama_3b" in report.findings(rows, env)


def test_the_accelerator_loop_steps_until_durable_and_every_checkpoint_is_its_steps_state(tmp_path):
    # In the accelerator-bound loop, with the optimizer state (the default): the loop steps while the save is in
    # flight, then steps_after more; its host part is recorded; every checkpoint verifies. A fork() snapshot
    # cannot copy a device's memory: it is left out of this loop.
    asked = [SAVERS[n] for n in ("safetensors", "dcp-async-staging", "fork+safetensors")]
    savers = asked[:2]
    opts = training.TrainingOptions(out=tmp_path, checkpoints=tmp_path / "ckpts", results=tmp_path / "r.jsonl",
                                    repeats=2, steps_before=1, steps_after=2, loops=("accelerator",))
    env, rows = training.run_training(asked, get_model("tiny"), opts)
    assert env["loops"] == {"accelerator": [s.name for s in savers]} and env["state"] == "model+optimizer"
    assert env["device_step_s"] == pytest.approx(training.device_step_s(get_model("tiny").n_params))
    assert [(r["loop"], r["approach"]) for r in rows] == [("accelerator", s.name) for s in savers for _ in (1, 2)]
    assert all(r["verified"] and r["error"] is None for r in rows)
    for r in rows:
        assert r["state"] == "model+optimizer" and r["checkpoint_bytes"] == 3 * get_model("tiny").nbytes + 4 * len(
            get_model("tiny").specs)  # the weights, both moments, and each tensor's step count
        assert len(r["steps_after_s"]) == 2 == len(r["host_after_s"]) == len(r["host_cpu_after_s"])
        assert len(r["host_inflight_s"]) == len(r["steps_inflight_s"])
        assert r["blocking_s"] == pytest.approx(r["call_s"] + (r["update_wait_s"] or 0.0))
        assert r["durable_s"] <= r["segment_s"] - sum(r["steps_after_s"])  # the steps after began once durable
    assert all(r["update_wait_s"] is not None and r["staging_s"] > 0 for r in rows
               if r["approach"] == "dcp-async-staging")
    assert all(r["update_wait_s"] is None for r in rows if r["approach"] != "dcp-async-staging")
    assert list(report.cost_table(rows, "accelerator").index) == [s.name for s in savers]
    assert "accelerator-bound loop" in report.loop_setup(rows, env)


def test_a_staging_that_hangs_at_the_loops_gate_ends_its_rows_and_the_phase_goes_on(tmp_path):
    # A saver whose staging never finishes: the loop's wait at its gate is bounded by the same limit as the wait
    # for durability, the row says hung, and the next saver is measured.
    from llama_ckpt.bench.savers import StagedThread

    release = threading.Event()

    class StuckStaging(StagedThread):
        def _launch(self, state_dict, staged, pending):
            work = super()._launch(state_dict, staged, pending)

            def gate(timeout):
                if not release.wait(timeout):
                    raise TimeoutError("staging")
            pending.gate = gate
            return lambda: (release.wait(60), work())

    stuck = StuckStaging("stuck-staging", "a staging that hangs", SAVERS["safetensors"].fmt, "safetensors")
    opts = training.TrainingOptions(out=tmp_path, checkpoints=tmp_path / "ckpts", results=tmp_path / "r.jsonl",
                                    repeats=1, steps_before=1, steps_after=1, wait_timeout_s=1.0,
                                    loops=("accelerator",))
    try:
        env, rows = training.run_training([stuck, SAVERS["safetensors"]], get_model("tiny"), opts)
    finally:
        release.set()
    assert [(r["approach"], r["verified"]) for r in rows] == [("stuck-staging", False), ("safetensors", True)]
    assert rows[0]["error"] == "hung: not durable 1 s after the call (its staging was still copying)"
    assert rows[0]["update_wait_s"] >= 0 and rows[0]["blocking_s"] >= rows[0]["update_wait_s"]


def test_the_accelerator_loop_changes_every_tensor_every_step():
    t = training.DeviceTrainer(get_model("tiny"), device_s=0.0)
    before = _expected(t.state_dict(True))
    t.step()
    after = _expected(t.state_dict(True))
    assert before.keys() == after.keys() and all(before[k].digest != after[k].digest for k in before)
    assert set(after) == set(_trainer_keys())  # the same names as the CPU loop's state
    assert t.last_host_s > 0 and t.last_host_cpu_s > 0


def _trainer_keys():
    t = training.Trainer(get_model("tiny"))
    t.step()
    return t.state_dict(True)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("gate", [True, False], ids=["waited", "not-waited"])
def test_dcp_async_staging_needs_the_loop_to_wait_before_its_update(tmp_path, monkeypatch, gate):
    # DCP's async staging copies after the call returns: a loop that updates the state before the staging is done
    # checkpoints the next step's values (the control, not-waited, shows the check catches it); waiting at the gate
    # before the update gives step k's state.
    from torch.distributed.checkpoint.staging import DefaultStager

    go = threading.Event()
    stage = DefaultStager._stage
    monkeypatch.setattr(DefaultStager, "_stage", lambda self, sd, **kw: go.wait(30) and stage(self, sd, **kw))
    saver = SAVERS["dcp-async-staging"]
    t = training.DeviceTrainer(get_model("tiny"), device_s=0.0)
    t.step()
    sd = t.state_dict(True)
    at_k = _expected(sd)
    loc = LocalDir(tmp_path / "ckpt")
    try:
        pending = saver.start(sd, loc, {k: e.digest for k, e in at_k.items()})
        assert pending.gate is not None and not pending.done()
        if gate:
            t.gate = pending.gate
            threading.Timer(0.2, go.set).start()  # the staging finishes while the loop waits at the gate
        t.step()
        go.set()
        pending.wait(60)
    finally:
        go.set()
        saver.close()
    assert check(saver.load(loc), at_k).verified is gate
    if gate:
        assert t.gate is None and t.gate_waited_s is not None


def test_the_phase_refuses_an_unknown_loop_or_saver(tmp_path):
    from llama_ckpt.study.phases import get_phase
    from llama_ckpt.suite.kinds import Training

    with pytest.raises(UserError, match="loops: gpu; the loops: accelerator, cpu"):
        Training(get_phase("07"), out_dir=tmp_path, loops="gpu").plan()
    with pytest.raises(UserError, match="cpu_savers: no saver nope"):
        Training(get_phase("07"), out_dir=tmp_path, cpu_savers="dcp,nope").plan()
    plan = Training(get_phase("07"), out_dir=tmp_path, loops="cpu", cpu_savers="all").plan()
    assert list(plan) == ["cpu"] and [s.name for s in plan["cpu"]] == list(SAVERS)


def test_the_interval_at_which_checkpoints_cost_a_share_of_the_run():
    # cost / (interval + cost) <= share: a 1 s checkpoint costs 1% with 99 s of training between checkpoints
    assert report.interval_for(1.0, 0.1, 0.0, 0.01) == (990, pytest.approx(99.0))
    # never shorter than the save's background: the next checkpoint would wait for it
    assert report.interval_for(0.01, 0.1, 30.0, 0.05) == (300, pytest.approx(30.0))
    assert report.interval_for(0.0, 0.1, 0.0, 0.05) == (1, pytest.approx(0.1))


def test_model_path_is_refused_for_training(tmp_path):
    with pytest.raises(UserError, match="MODEL_PATH is not used"):
        training.run_training([], object(), training.TrainingOptions(out=tmp_path, checkpoints=tmp_path / "c",
                                                                     results=tmp_path / "r"))


def _row(name, mode, blocking, durable, before, inflight, after, sync_of=None, verified=True):
    return {"record": "training", "approach": name, "mode": mode, "sync_of": sync_of or name, "format": "f",
            "checkpoint_bytes": 1000, "blocking_s": blocking, "durable_s": durable, "stall_s": 0.0,
            "segment_s": blocking + sum(inflight) + sum(after), "steps_before_s": before,
            "steps_inflight_s": inflight, "steps_after_s": after, "load_s": 0.1, "peak_rss_bytes": 1500,
            "peak_rss_idle_bytes": 1200, "verified": verified, "error": None if verified else "not the weights"}


def test_report_rules_slowdown_cost_and_the_aims():
    rows = [_row("sync", "sync", 2.0, 2.0, [1.0, 1.0], [], [1.0, 1.0]),
            _row("async", "thread", 0.05, 2.5, [1.0, 1.0], [1.2, 1.3], [1.0], sync_of="sync"),
            _row("bad", "thread", 0.01, 1.0, [1.0], [], [1.0], sync_of="sync", verified=False)]
    s = report.per_saver(rows)
    assert s["async"]["idle_step"] == 1.0 and s["async"]["inflight_step"] == 1.25
    assert s["async"]["slowdown"] == pytest.approx(0.25)
    assert s["async"]["cost"] == [pytest.approx(0.05 + 0.2 + 0.3)]
    assert s["async"]["extra_rss"] == [300]
    text = report.findings(rows)
    assert "bad: 1 of 1" in text  # a checkpoint that is not its step's weights is called out
    assert "Least blocking: async" in text and "2.5% of its synchronous save" in text and "within the 5% aim" in text
    assert "+25%" in text and "**not** within the 10% aim" in text
    assert list(report.ranking(rows)["saver"]) == ["async", "sync"]  # "bad" is left out


def test_a_saver_that_fails_before_giving_the_loop_back_leaves_nothing_behind(trainer, tmp_path, monkeypatch):
    saver = SAVERS["copy+safetensors-thread"]
    monkeypatch.setattr(saver, "stage", lambda sd: (_ for _ in ()).throw(MemoryError("staging copy")))
    sd = trainer.state_dict()
    with pytest.raises(MemoryError):
        saver.start(sd, LocalDir(tmp_path / "ckpt"), {k: e.digest for k, e in _expected(sd).items()})
    assert not LocalDir(tmp_path / "ckpt").exists() and not LocalDir(tmp_path).stale_saves()
