"""Cost cards projected to MLPerf Storage's checkpoint workloads (docs/decisions.md#projection), through `project`."""

import dataclasses
import json
import subprocess
import sys

import pytest

from llama_ckpt.model import get_model
from llama_ckpt.results import projection, work
from tests.helpers import assert_one_line_error, cli_here
from tests.test_work import _profile, _rate, _row


def test_the_workloads_sizes_are_mlperfs_from_their_dimensions():
    """8B, 70B and 405B come to the sizes MLPerf Storage publishes (in GiB) from the DLIO configs' dimensions;
    1T does not (stated in the decision record), and nothing hides that."""
    for name in ("llama3-8b", "llama3-70b", "llama3-405b"):
        w = projection.WORKLOADS[name]
        assert w.total_bytes / 2**30 == pytest.approx(w.published_GiB, rel=0.01), name
    one_t = projection.WORKLOADS["llama3-1t"]
    assert one_t.total_bytes / 2**30 < 0.9 * one_t.published_GiB
    assert projection.WORKLOADS["llama3-8b"].params == pytest.approx(8.03e9, rel=0.001)
    assert [w.nodes for w in projection.WORKLOADS.values()] == [1, 8, 64, 128]


def test_a_ranks_bytes_follow_the_zero_stage():
    w8, w405 = projection.WORKLOADS["llama3-8b"], projection.WORKLOADS["llama3-405b"]
    assert w8.rank_bytes == pytest.approx(w8.params * 14 / 8, rel=1e-9)  # ZeRO 3: an even share of everything
    # ZeRO 1: the optimizer's 12 bytes shared by all 512 ranks; the weights' 2 by a replica's 8 x 32
    assert w405.rank_bytes == pytest.approx(w405.params * (12 / 512 + 2 / 256), rel=1e-9)


def test_a_node_shared_by_its_ranks():
    prof = _profile(4, 1e9).to_dict() | {"memory_copy_1_Bps": _rate(10e9), "memory_copy_all_Bps": _rate(20e9)}
    prof = work.as_profile(prof)
    node = projection.shared(prof, 8)
    assert node.cores == 0.5 and work.disk_Bps(node, "save") == 1e9 / 8 and work.disk_Bps(node, "load") == 1e9 / 8
    assert node.fsyncs_per_s.median == 1e3 / 8 and node.file_creates_per_s.median == 1e4 / 8
    # 8 ranks x 10 GB/s one-thread copies would be 80 GB/s; every core copied 20: each rank's rates slowed 4x
    assert node.buffered_write_Bps.median == 2e9 / 4 and node.fresh_memory_Bps.median == 4096e6 / 4
    assert projection.shared(prof, 1) is prof


def test_project_predicts_the_slowest_rank_from_a_card_file_and_a_profile(tmp_path):
    prof = _profile(16, 2e9).to_dict() | {"memory_copy_1_Bps": _rate(10e9), "memory_copy_all_Bps": _rate(80e9)}
    cards = work.cards([_row(), _row(save_s=1.3), _row(save_s=1.1)], _profile(4, 1e9))
    path, target = tmp_path / "cost-cards.json", tmp_path / "node.json"
    work.write_cards(path, cards, _profile(4, 1e9), "r")
    target.write_text(json.dumps(prof))
    r = cli_here("project", "--cards", str(path), "--profile", str(target), "--workload", "llama3-8b", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    w = projection.WORKLOADS["llama3-8b"]
    save = next(p for p in got["projections"] if p["step"] == "save")
    want = work.predict(cards[0], projection.shared(work.as_profile(prof), 8), w.rank_bytes)
    assert save["seconds"] == pytest.approx(want.seconds) and save["rank_bytes"] == w.rank_bytes
    assert save["GiBps"] == pytest.approx(w.total_bytes / want.seconds / 2**30)  # MLPerf's "GB" are GiB
    assert got["assumed"] and got["measured"] and got["nodes"] == 1
    text = cli_here("project", "--cards", str(path), "--profile", str(target), "--workload", "llama3-70b")
    assert text.returncode == 0 and "on 8 node(s) of 8" in text.stdout and "assumed:" in text.stdout
    # a preset on ranks of one node: its weights as the approach stores them, split evenly
    r = cli_here("project", "--cards", str(path), "--profile", str(target), "--workload", "tiny:2", "--json")
    assert r.returncode == 0, r.stderr
    tiny = get_model("tiny")
    got = json.loads(r.stdout)
    assert got["projections"][0]["rank_bytes"] == -(-work.payload_of(tiny, cards[0]) // 2)
    assert not any("optimizer" in a for a in got["assumed"])  # the weights alone: no MLPerf layout assumed
    assert_one_line_error(cli_here("project", "--cards", str(path), "--profile", str(target), "--workload",
                                   "llama3-9b"), "not one of llama3-8b")
    assert_one_line_error(cli_here("project", "--profile", str(target), "--workload", "llama3-8b", "--out",
                                   str(tmp_path)), "no cost cards")


def _savers(mode, blocking, staging=None):
    """07's figures of one saver, as report.training.per_saver gives them: 2 GB of state."""
    return {"n": 2, "mode": mode, "sync_of": "fmt", "state_bytes": 2 * 10**9, "blocking": blocking,
            "staging": staging or []}


def test_a_training_projection_blocks_for_the_save_or_for_the_staging_copy_at_the_stated_rate():
    """docs/decisions.md#projection-training, worked by hand: a synchronous saver holds the loop for its whole
    projected save; one in the background for the rank's bytes over the device-to-host rate plus the rest of its
    measured blocking per byte; the interval for 1% is 99 blockings, no shorter than the save's background."""
    prof = work.as_profile(_profile(16, 2e9).to_dict() | {"memory_copy_1_Bps": _rate(10e9),
                                                          "memory_copy_all_Bps": _rate(80e9)})
    cards = work.cards([_row(), _row(save_s=1.3), _row(save_s=1.1)], _profile(4, 1e9))
    w = projection.WORKLOADS["llama3-8b"]
    d2h = w.rank_bytes / 20e9  # every saver's state comes off the device first
    durable = d2h + work.predict(cards[0], projection.shared(prof, 8), w.rank_bytes).seconds
    savers = {"sync": _savers("sync", [3.0, 3.0]),
              "staged": _savers("thread", [0.5, 0.7], staging=[0.4, 0.4]),  # 0.2 s beyond its staging copy
              "unstaged": _savers("thread", [0.3, 0.3]),  # no staging record: a copy at 10 GB/s (0.2 s) is taken off
              "unknown": {**_savers("sync", [1.0]), "sync_of": "other"}}  # no card of its format: left out
    got = {r["saver"]: r for r in projection.training(savers, cards, prof, w, d2h_Bps=20e9)}
    assert set(got) == {"sync", "staged", "unstaged"}
    assert got["sync"]["blocking_s"] == pytest.approx(durable) and got["sync"]["durable_s"] == pytest.approx(durable)
    assert got["sync"]["interval for 1%"] == pytest.approx(99 * durable)
    assert got["staged"]["blocking_s"] == pytest.approx(d2h + 0.2 / 2e9 * w.rank_bytes)
    assert got["unstaged"]["blocking_s"] == pytest.approx(d2h + 0.1 / 2e9 * w.rank_bytes)
    for name in ("staged", "unstaged"):  # the background's save outlasts 99 blockings here, or not: the larger
        r = got[name]
        assert r["interval for 1%"] == pytest.approx(max(99 * r["blocking_s"], durable - r["blocking_s"]))


def test_the_published_result_is_projected_on_its_described_node():
    """The described node: this profile with the description's cores and the drive's stated rates as every disk
    rate the model reads; the check sets the published seconds against the projection."""
    prof = work.as_profile(_profile(2, 1e9).to_dict() | {"memory_copy_1_Bps": _rate(10e9),
                                                         "memory_copy_all_Bps": _rate(20e9)})
    pub = projection.Published("p", "s", "llama3-8b", "fmt", 192, 3e9, 6e9, "stated", 40.0, 20.0, ("x",))
    node = projection.described(dataclasses.replace(prof, fs_type="tmpfs"), pub)  # the drive, never this tmpfs
    assert node.cores == 192 and work.disk_Bps(node, "save") == 3e9 and work.disk_Bps(node, "load") == 6e9
    cards = work.cards([_row(), _row(save_s=1.3), _row(save_s=1.1)], _profile(4, 1e9))
    got = {r["step"]: r for r in projection.published_check(cards, prof, pub)}
    w = projection.WORKLOADS["llama3-8b"]
    for step, published in (("save", 40.0), ("load", 20.0)):
        want = work.predict(next(c for c in cards if c.step == step), projection.shared(node, 8), w.rank_bytes)
        assert got[step]["projected_s"] == pytest.approx(want.seconds)
        assert got[step]["error"] == pytest.approx(published / want.seconds - 1)
        assert got[step]["within"] == (abs(published / want.seconds - 1) <= 0.25)
    assert projection.published_check([], prof, pub) == []  # no card of its approach: nothing re-derived


def test_project_to_an_mlperf_workload_runs_without_torch_and_anything_else_goes_to_the_full_cli():
    """`python -m llama_ckpt project --workload llama3-8b` answers without importing torch (issue 37's aim: under
    a second); the last --workload decides, as argparse takes it; a preset's weights, help and every other
    command go to llama_ckpt.cli."""
    from llama_ckpt import projecting

    assert projecting.handles(["project", "--profile", "p", "--workload", "llama3-8b"])
    assert projecting.handles(["project", "--workload=llama3-70b", "--json"])
    assert not projecting.handles(["project", "--workload", "llama3-8b", "--workload", "tiny:8"])
    assert projecting.handles(["project", "--workload", "tiny:8", "--workload", "llama3-8b"])
    assert not projecting.handles(["project", "--help"]) and not projecting.handles(["predict", "--workload",
                                                                                     "llama3-8b"])
    code = ("import runpy, sys\n"
            "sys.argv = ['llama_ckpt', 'project', '--profile', '/nonexistent.json', '--cards', '/nonexistent',\n"
            "            '--workload', 'llama3-8b']\n"
            "try:\n    runpy.run_module('llama_ckpt', run_name='__main__')\n"
            "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "exit 2 False", (r.stdout, r.stderr)  # refused in one line, torch never imported
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("python -m llama_ckpt project: error:") and "/nonexistent" in line


def test_publish_refuses_a_destination_that_is_not_a_rendered_run_and_a_run_that_is_not_there(tmp_path):
    from llama_ckpt.errors import UserError
    from llama_ckpt.report import publish

    (tmp_path / "runs" / "r1").mkdir(parents=True)
    with pytest.raises(UserError, match="no complete run"):
        publish.publish(tmp_path, tmp_path / "dest")
    with pytest.raises(UserError, match="no run nope"):
        publish.publish(tmp_path, tmp_path / "dest", "nope")
    with pytest.raises(UserError, match="not complete"):
        publish.publish(tmp_path, tmp_path / "dest", "r1")
    kept = tmp_path / "docs"
    kept.mkdir()
    (kept / "protocol.md").write_text("a page of the docs")
    with pytest.raises(UserError, match="protocol.md"):
        publish._clear(kept)  # never empties a folder it did not write
    assert (kept / "protocol.md").read_text() == "a page of the docs"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cost-cards.json").write_text("{}")  # a file of the name it writes, but no page of its own beside
    with pytest.raises(UserError, match="not a rendered run"):
        publish._clear(mine)
    assert (mine / "cost-cards.json").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "README.md").write_text("# Reference run `x`\n\n![png](output_1_0.png)\n")
    (old / "output_1_0.png").write_bytes(b"\x89PNG")
    (old / "holiday.png").write_bytes(b"\x89PNG")  # a chart the page does not link: not its own
    with pytest.raises(UserError, match="holiday.png"):
        publish._clear(old)
    (old / "holiday.png").unlink()
    publish._clear(old)
    assert not list(old.iterdir())  # an earlier page and its charts: replaced
