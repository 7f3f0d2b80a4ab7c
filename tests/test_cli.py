"""The CLI: list, run, compare, and bad input as one line with exit code 2."""

import json
import pytest
import torch

from llama_ckpt.registry import names

from .helpers import assert_one_line_error, cli, cli_here


def test_list_shows_every_approach_name_first_one_per_line():
    r = cli_here("list")
    assert r.returncode == 0
    single, sharded = r.stdout.strip().split("\n\n")
    lines = single.splitlines()
    assert [l.split()[0] for l in lines] == names()
    assert all(len(l.split(None, 1)) == 2 for l in lines)  # a description on each
    head, *rest = sharded.splitlines()
    assert "--world-size" in head and [l.split()[0] for l in rest] == names(sharded=True)


@pytest.mark.parametrize("cmd", [[], ["run"], ["compare"], ["list"]])
def test_help_works_everywhere(cmd):
    r = cli_here(*cmd, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


def test_unknown_approach_lists_the_valid_names(tmp_path):
    assert_one_line_error(cli_here("run", "--approach", "pytorch,bogus", "--out", str(tmp_path)),
                          "unknown approach 'bogus'", "pytorch", "ts+ocdbt")


def test_unknown_preset_lists_the_valid_presets(tmp_path):
    assert_one_line_error(cli_here("run", "--model", "llama-70b", "--out", str(tmp_path)),
                          "unknown model preset 'llama-70b'", "tiny", "small", "open_llama_3b")


def test_missing_model_path(tmp_path):
    assert_one_line_error(cli_here("run", "--model-path", str(tmp_path / "nope"), "--out", str(tmp_path)),
                          "no such directory")


def test_model_path_that_is_not_a_model_folder(tmp_path):
    (tmp_path / "m").mkdir()
    assert_one_line_error(cli_here("run", "--model-path", str(tmp_path / "m"), "--out", str(tmp_path)),
                          "not a model folder", "config.json")
    (tmp_path / "m" / "config.json").write_text("{}")
    assert_one_line_error(cli_here("run", "--model-path", str(tmp_path / "m"), "--out", str(tmp_path)),
                          "not a model folder", "safetensors")


def test_output_dir_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(cli_here("run", "--model", "tiny", "--out", str(blocker / "out")),
                          "output directory", "cannot be written")


@pytest.mark.parametrize("bad", ["0", "-1", "three"])
def test_bad_repeats(tmp_path, bad):
    assert_one_line_error(cli_here("run", "--model", "tiny", "--repeats", bad, "--out", str(tmp_path)), "--repeats")


def test_compare_of_a_missing_file(tmp_path):
    assert_one_line_error(cli_here("compare", str(tmp_path / "none.jsonl")), "no such file")


def test_run_on_tiny_prints_rows_and_the_comparison_and_writes_results(tmp_path):
    r = cli("run", "--approach", "pytorch,tensorstore,ts+chunks", "--model", "tiny", "--repeats", "2",
            "--out", str(tmp_path), "--keep")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(" verified") == 6
    assert "save vs tensorstore" in r.stdout and "disk reference: write" in r.stdout
    results = list((tmp_path / "results").glob("*.jsonl"))
    assert len(results) == 1
    rows = [json.loads(l) for l in results[0].read_text().splitlines()]
    assert sum(r["record"] == "measurement" for r in rows) == 6
    kept = sorted(p.name for p in next((tmp_path / "checkpoints").iterdir()).iterdir())
    assert kept == ["pytorch", "tensorstore", "ts+chunks"]
    c = cli("compare", str(results[0]))
    assert c.returncode == 0 and "ts+chunks" in c.stdout


def test_checkpoints_are_deleted_without_keep(tmp_path):
    r = cli("run", "--approach", "ts+chunks", "--model", "tiny", "--repeats", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert not any(p.is_file() for p in (tmp_path / "checkpoints").rglob("*"))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny Llama saved by transformers in bfloat16 (safetensors), as a real
    downloaded model folder would be."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    d = tmp_path_factory.mktemp("hf") / "tiny-llama"
    model.save_pretrained(d)
    return d, {k: v.clone() for k, v in model.state_dict().items()}


def test_model_path_runs_every_approach_on_real_weights(tmp_path, hf_folder):
    d, sd = hf_folder
    r = cli("run", "--model-path", str(d), "--repeats", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr + r.stdout
    rows = [json.loads(l) for l in next((tmp_path / "results").glob("*.jsonl")).read_text().splitlines()]
    ms = [r for r in rows if r["record"] == "measurement"]
    assert len(ms) == len(names()) and all(m["verified"] for m in ms)
    assert all(m["n_tensors"] == len(sd) and m["source_dtype"] == "bfloat16" for m in ms)
    # bfloat16 -> float32 is lossless
    assert all(m["max_abs_err"] == 0 for m in ms if m["stored_dtype"] == "float32")


def test_make_phase_targets_run_their_phase():
    # README: `make phase-4b` runs one phase. Pattern rules do not apply to .PHONY targets, so listing them there
    # made every phase target a silent no-op ("Nothing to be done").
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    for phase in ("00", "4b", "08"):
        out = subprocess.run(["make", "-n", f"phase-{phase}", "OUT=/tmp/llama-ckpt-make-n"], cwd=repo,
                             capture_output=True, text=True, check=True).stdout
        assert f"--phases {phase} --no-summary" in out and '--out "/tmp/llama-ckpt-make-n"' in out


def test_suite_set_overrides_a_phase_notebooks_own_parameter_and_refuses_the_rest():
    from llama_ckpt.errors import UserError
    from llama_ckpt.suite.runner import parse_sets

    assert parse_sets(["08.CLAIMS_BUDGET_S=120", "4e.CLOUD_DELAYS_MS=[0,5]", "4e-ocdbt.S3_ENDPOINT=http://h:1"]) == {
        "08-claims": {"CLAIMS_BUDGET_S": 120}, "4e-ocdbt": {"CLOUD_DELAYS_MS": [0, 5], "S3_ENDPOINT": "http://h:1"}}
    for bad, says in (("08.NOPE=1", "08-claims has no parameter 'NOPE' of its own"),
                      ("08.REPEATS=5", "has no parameter 'REPEATS' of its own"),  # every phase's: --repeats
                      ("99.X=1", "unknown phase '99'"), ("08=1", "expected PHASE.NAME=VALUE")):
        with pytest.raises(UserError, match=says):
            parse_sets([bad])
