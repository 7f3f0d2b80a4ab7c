"""Smoke test: every notebook executed by papermill on the tiny model, as
`make run-all MODEL=tiny REPEATS=1` does (with two of its bounds lower: see ``suite_run``)."""

import json
import os
import shutil
import subprocess
from collections import Counter
import sys
from pathlib import Path

import nbformat
import pytest

from llama_ckpt.report.summary import Summary
from llama_ckpt.study.claims import GUIDE_EIGHT
from llama_ckpt.suite import runner as suite
from llama_ckpt.study.phases import CLAIMS, COMPARE, PHASES, SUMMARY_SLUG, TRAINING
from llama_ckpt.study.runs import phase_complete
from llama_ckpt.suite import run
from llama_ckpt.errors import UserError
from llama_ckpt.results import read_results

NOTEBOOKS = suite.NOTEBOOKS
ALL = [p.slug for p in PHASES.values()] + [SUMMARY_SLUG]
RUN = "smoke"
SMOKE_DELAYS_MS = (0.0, 5.0)
SMOKE_CLAIMS_CAP = 7  # 08: the rule's minimum of 5, then one round of 2
SMOKE_CLAIMS_BUDGET_S = 600  # (the default run's budget is 0: no round beyond the minimum)


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    # The same run with two of its bounds lower: 4e's cloud section at a shorter added round trip than the
    # default's 20 ms (the same path, less waiting), and 08's rounds capped at one beyond the rule's minimum
    # (on tiny, timings too short to decide a claim took them to the cap of 12); and what the default run leaves
    # out, cheap on tiny: 4c's and 4d's pairs on the other weights, which 08 takes up from the run's rows (the
    # default, without them: test_the_other_weights_are_left_out_unless_asked)
    r = subprocess.run([sys.executable, "-m", "llama_ckpt", "suite", "--model", "tiny", "--repeats", "1",
                        "--out", str(out), "--run-id", RUN, "--set", f"4e.CLOUD_DELAYS_MS={list(SMOKE_DELAYS_MS)}",
                        "--set", f"08.CLAIMS_CAP={SMOKE_CLAIMS_CAP}",
                        "--set", f"08.CLAIMS_BUDGET_S={SMOKE_CLAIMS_BUDGET_S}",
                        "--set", "4c.OTHER_WEIGHTS=true", "--set", "4d.OTHER_WEIGHTS=true"],
                       capture_output=True, text=True, timeout=1800)
    return out, r


def test_suite_exits_cleanly_and_reports_progress(suite_run):
    out, r = suite_run
    assert r.returncode == 0, r.stderr[-3000:]
    for i, p in enumerate(PHASES.values(), 1):
        assert f"[{i}/{len(PHASES)}] {p.slug}" in r.stdout


@pytest.mark.parametrize("slug", ALL)
def test_executed_notebook_has_no_error_output(suite_run, slug):
    out, _ = suite_run
    nb = nbformat.read(out / "runs" / RUN / f"{slug}.ipynb", as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))  # a figure


@pytest.mark.parametrize("phase", list(PHASES.values()), ids=lambda p: p.slug)
def test_each_phase_wrote_its_result_rows(suite_run, phase):
    out, _ = suite_run
    loaded = read_results([out / "runs" / RUN / "results" / f"{phase.slug}.jsonl"])
    assert loaded.ends and (loaded.environments or phase.kind == CLAIMS)
    if phase.id == "06":  # every sharded approach at every (save ranks, load ranks) configuration
        from llama_ckpt.study.phases import DIST_CONFIGS, TORCHRUN_CONFIGS
        from llama_ckpt.registry import names

        assert len(loaded.ends) == len(DIST_CONFIGS) + len(TORCHRUN_CONFIGS)
        # configuration after configuration, each round of approaches in its own random order
        key = lambda x: (x[1:], x[0])
        got = [(r["approach"], r["world_size"], r["load_world_size"], r["nodes"], r["launcher"])
               for r in loaded.measurements]
        configs = [(w, lw, 1, "spawn") for w, lw in DIST_CONFIGS] + [
            (n * k, n * k, n, "torchrun") for n, k in TORCHRUN_CONFIGS]
        assert [c for i, c in enumerate(g[1:] for g in got) if i == 0 or c != got[i - 1][1:]] == configs
        assert sorted(got, key=key) == sorted([
            (a, w, lw, 1, "spawn") for w, lw in DIST_CONFIGS for a in names(sharded=True)] + [
            (a, n * k, n * k, n, "torchrun") for n, k in TORCHRUN_CONFIGS for a in names(sharded=True)], key=key)
    elif phase.kind == TRAINING:  # one checkpoint of every saver in each loop, each holding its step's weights
        from llama_ckpt.bench.savers import CPU_SAVERS, SAVERS

        assert [(r["loop"], r["approach"]) for r in loaded.training] == [
            ("accelerator", n) for n, s in SAVERS.items() if s.on_accelerator] + [
            ("cpu", n) for n in CPU_SAVERS] and not loaded.measurements
        assert all(r["verified"] and r["blocking_s"] > 0 and r["durable_s"] > 0 for r in loaded.training)
        assert all(r["state"] == "model+optimizer" for r in loaded.training)  # the optimizer state by default
    elif phase.kind == CLAIMS:  # rounds of repeats of the guide's approaches, then its own end record
        assert any(e.get("claims_final") for e in loaded.ends)
        # the cap set with --set reached the notebook: no approach beyond it, every phase's rows counted
        every = read_results(sorted((out / "runs" / RUN / "results").glob("*.jsonl"))).measurements
        counts = Counter((r["model"], r["approach"]) for r in every if r["approach"] in GUIDE_EIGHT)
        assert counts and max(counts.values()) <= SMOKE_CLAIMS_CAP
        # the other weights, measured by 4c and 4d, were judged here too, with repeats to the rule's minimum
        from llama_ckpt.study.claims import MIN_REPEATS

        assert {r["weights"] for r in loaded.measurements} == {"float16-origin", "float32"}
        assert all(counts[("tiny:float32", n)] >= MIN_REPEATS for n in ("tensorstore", "ts+compression"))
        assert {r["approach"] for r in loaded.measurements} <= set(GUIDE_EIGHT)
    else:  # every approach of the phase, measured here or shared from a phase before it in the run
        res = run(phase.id, model="tiny", repeats=1, out_dir=out, run_id=RUN, say=lambda s: None)
        # (read back at the end of the run, a phase's rows also hold the repeats later phases, 08, added)
        assert res.reused
        assert list(dict.fromkeys(r["approach"] for r in res.rows)) == [a.name for a in phase.approaches()]
        assert all(r["phase"] == phase.slug for r in loaded.measurements)
        if phase.both_weights:  # and the claim's pair on the other weights
            assert list(dict.fromkeys(r["approach"] for r in res.other)) == list(phase.both_weights)
            assert {r["weights"] for r in res.other} == {"float32"}
    assert all(r["verified"] for r in loaded.measurements)


def test_a_configuration_is_measured_once_per_run(suite_run):
    out, _ = suite_run
    seen = {}
    for p in PHASES.values():
        if p.kind == COMPARE:
            for r in read_results([out / "runs" / RUN / "results" / f"{p.slug}.jsonl"]).measurements:
                key = (r["approach"], json.dumps(r["knobs"], sort_keys=True), r["model"])
                seen.setdefault(key, []).append(p.slug)
    assert seen and all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}


def test_summary_wrote_a_real_png(suite_run):
    from PIL import Image

    out, _ = suite_run
    for path in (out / "8way_performance_comparison.png",
                 out / "runs" / RUN / "figures" / "8way_performance_comparison.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            assert im.size[0] > 500 and im.size[1] > 200


def test_the_8_way_table_has_the_eight_approaches(suite_run):
    _, r = suite_run
    table = r.stdout.split("The 8-way table", 1)[1]
    first_words = [line.split()[0] for line in table.splitlines()[1:] if line.strip()]
    assert [w for w in first_words if w in GUIDE_EIGHT] == list(GUIDE_EIGHT)


def test_summary_has_a_claims_table_with_computed_verdicts(suite_run):
    out, _ = suite_run
    nb = nbformat.read(out / "runs" / RUN / f"{SUMMARY_SLUG}.ipynb", as_version=4)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    assert "Chunking is the primary optimisation" in html
    assert sum(html.count(v) for v in ("holds", "does not hold", "inconclusive")) >= 8


def test_summary_ranks_the_loaders_with_their_share_of_the_disk_and_their_memory(suite_run):
    from llama_ckpt.report import summary

    out, _ = suite_run
    s = summary.load(out, RUN)
    rank = s.ranking()
    assert rank["share_of_disk"].str.endswith("%").sum() == 10  # fastest save and load: five each
    answer = s.answer()  # the summary opens with it: each job's winner, how sure, its binding limit
    for job in ("fastest save", "fastest cold load", "smallest without loss"):
        first = rank.loc[job].iloc[0]
        assert f"**{job}**: `{first['approach']}`" in answer and first["vs_next"] in answer
    assert answer.count("bound here by **") == 2
    loaders = {"runai-streamer", "fastsafetensors", "tensorizer", "pytorch-fp32-mmap"}
    assert loaders <= set(s.all_table().index) and loaders <= set(s.memory().index)
    aim = s.aim()
    assert list(aim.columns) == ["save", "load", "size", "share_of_disk", "repeats"]
    assert aim.index[0].startswith("fastest cold load (") and 0 < aim.iloc[0]["share_of_disk"]
    assert {"ts+best / safetensors", "ts+best16 / pytorch"} <= set(aim.index)


def test_summary_ranks_the_savers_for_training(suite_run):
    from llama_ckpt.bench.savers import SAVERS
    from llama_ckpt.report import summary

    out, _ = suite_run
    s = summary.load(out, RUN)
    assert s.training_loop() == "accelerator"  # the loop asynchronous saving is used in, where the run has it
    rank = s.training_ranking()
    assert sorted(rank["saver"]) == sorted(n for n, x in SAVERS.items() if x.on_accelerator)
    blocking = [float(b.split()[0]) for b in rank["blocking"]]
    assert blocking == sorted(blocking)  # least blocking first


def test_summary_has_the_live_reliability_table_of_every_approach_and_fault(suite_run):
    from llama_ckpt.bench import faults
    from llama_ckpt.registry import names

    out, _ = suite_run
    nb = nbformat.read(out / "runs" / RUN / f"{SUMMARY_SLUG}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and "faults.reliability_table" in c.source]
    text = "".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs)
    block = text.split("\n\n")[0].splitlines()  # pandas wraps wide tables in blocks of columns
    start = next(i for i, l in enumerate(block) if l.split() == ["approach"]) + 1
    assert [l.split()[0] for l in block[start:]] == names()  # every approach, in the registry's order
    assert all(f in text for f in faults.FAULTS)  # every fault
    assert faults.NOT_CAUGHT not in text  # the digests catch whatever the formats miss


def test_4e_measured_the_cloud_section_on_a_private_s3_server_and_the_summary_judges_claim_9(suite_run):
    from collections import Counter

    from llama_ckpt.study.claims import CLOUD_CLAIM, MIN_REPEATS
    from llama_ckpt.study.phases import CLOUD_SECTION
    from llama_ckpt.study.runs import cloud_results_path

    out, _ = suite_run
    for d in SMOKE_DELAYS_MS:
        loaded = read_results([cloud_results_path(out, RUN, "4e-ocdbt", d)])
        assert loaded.ends and loaded.ends[-1]["complete"]
        rows = loaded.measurements
        # claim 9's approaches to the verdict rule's minimum, the rest at the run's one repeat
        section = ["tensorstore", "ts+ocdbt", "ts+chunks", "ts+chunks[use_ocdbt=True]", "ts+best[use_ocdbt=False]",
                   "ts+best", "safetensors", "runai-streamer"]
        assert [a.name for a in CLOUD_SECTION.approaches()] == section
        assert Counter(r["approach"] for r in rows) == {
            n: MIN_REPEATS if n in CLOUD_CLAIM.approaches() else 1 for n in section}
        assert all(r["verified"] and r["s3_delay_ms"] == d and r["requests_save"] for r in rows)
    assert not (out / "runs" / RUN / "s3").exists()  # the private server's data went with it
    nb = nbformat.read(out / "runs" / RUN / f"{SUMMARY_SLUG}.ipynb", as_version=4)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    assert "OCDBT is better for cloud storage" in html and "RTT_added_ms" in html
    # the Run:ai streamer's cold load from S3 against OCDBT and boto3, in 4e's findings
    nb = nbformat.read(out / "runs" / RUN / "4e-ocdbt.ipynb", as_version=4)
    md = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))
    assert "cold load from S3: `runai-streamer` (its own client, one object)" in md
    assert "against `safetensors` (boto3, one object)" in md and "against `ts+best` (TensorStore, OCDBT)" in md


def test_4f_chose_among_the_io_knobs_and_says_which_point_was_fastest(suite_run):
    out, _ = suite_run
    nb = nbformat.read(out / "runs" / RUN / "4f-io.ipynb", as_version=4)
    md = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    for base in ("ts+best", "runai-streamer", "fastsafetensors", "tensorizer"):
        assert f"- **{base}**: fastest save" in md
    assert "ts+best is the fastest round trip of this sweep." in md or "beat ts+best by" in md
    assert "save_vs_base_x" in html and "load_anon_x" in html  # the sweep's table and the memory table


def test_running_again_with_the_same_run_id_skips_complete_phases(suite_run):
    out, _ = suite_run
    r = subprocess.run([sys.executable, "-m", "llama_ckpt", "suite", "--model", "tiny", "--repeats", "1",
                        "--out", str(out), "--run-id", RUN, "--phases", "00,4a", "--no-summary"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "00-baselines: complete in run smoke, skipped" in r.stdout
    assert "4a-concurrency: complete in run smoke, skipped" in r.stdout


@pytest.mark.parametrize("slug", ALL)
def test_help_notebook_lists_the_parameters(slug):
    from click.testing import CliRunner
    from papermill.cli import papermill

    r = CliRunner().invoke(papermill, ["--help-notebook", str(NOTEBOOKS / f"{slug}.ipynb")])  # what the CLI prints
    assert r.exit_code == 0, r.output
    names = ["OUT_DIR", "RUN_ID"] + ([] if slug == SUMMARY_SLUG else
                                     ["MODEL", "MODEL_PATH", "REPEATS", "KEEP_CHECKPOINTS", "PREPARE"])
    for n in names:
        assert f"  {n}: " in r.output, (n, r.output)
    assert "Unable to parse" not in r.output


@pytest.mark.parametrize("phase", list(PHASES.values()), ids=lambda p: p.slug)
def test_notebook_headers_are_the_phase_definitions(phase):
    nb = nbformat.read(NOTEBOOKS / f"{phase.slug}.ipynb", as_version=4)
    assert nb.cells[0].cell_type == "markdown"
    assert nb.cells[0].source == phase.header(), "run: python -m llama_ckpt.suite.runner headers"


@pytest.mark.parametrize("slug", ALL)
def test_committed_notebooks_are_clean(slug):
    nb = nbformat.read(NOTEBOOKS / f"{slug}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") for c in code), "outputs are committed"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for line in params[0].source.splitlines():
        assert ": " in line.split("=")[0] and "  # " in line, f"untyped or uncommented parameter: {line}"
    assert not any("class " in c.source or "def " in c.source for c in code), "logic belongs in llama_ckpt/"


def test_a_failing_phase_stops_the_suite_naming_it(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    shutil.copy(NOTEBOOKS / "00-baselines.ipynb", nbs)
    bad = nbformat.read(NOTEBOOKS / "4a-concurrency.ipynb", as_version=4)
    bad.cells.insert(3, nbformat.v4.new_code_cell("raise RuntimeError('injected failure')"))
    nbformat.write(bad, nbs / "4a-concurrency.ipynb")
    monkeypatch.setattr(suite, "NOTEBOOKS", nbs)
    out = tmp_path / "out"
    with pytest.raises(suite.PhaseFailed, match=r"phase 4a-concurrency failed in cell \d+: RuntimeError: injected"):
        suite.run_suite(["00", "4a", "4b"], model="tiny", repeats=1, out_dir=out, run_id="f", summary=False)
    assert phase_complete(out, "f", "00-baselines")  # finished phases keep their results
    executed = json.loads((out / "runs" / "f" / "4a-concurrency.ipynb").read_text())
    assert any(o.get("ename") == "RuntimeError" for c in executed["cells"] for o in c.get("outputs", []))
    assert not (out / "runs" / "f" / "4b-chunks.ipynb").exists()  # the suite stopped


def test_the_notebooks_parameter_defaults_are_the_packages():
    """A default kept in a notebook's parameters cell and in the package is the same in both."""
    from llama_ckpt.study import phases

    def defaults(slug):
        cell = next(c for c in nbformat.read(NOTEBOOKS / f"{slug}.ipynb", as_version=4).cells
                    if "parameters" in c.metadata.get("tags", []))
        ns = {}
        exec(cell.source, {}, ns)
        return ns
    d = defaults("08-claims")
    assert (d["CLAIMS_CAP"], d["CLAIMS_STEP"], d["CLAIMS_BUDGET_S"]) == (
        phases.CLAIMS_CAP, phases.CLAIMS_STEP, phases.CLAIMS_BUDGET_S)
    d = defaults("07-training")  # the notebook's defaults are the code's
    from llama_ckpt.bench.savers import CPU_SAVERS
    from llama_ckpt.bench.training import HOST_SLICE, LOOPS

    from llama_ckpt.suite.kinds import Training

    assert (d["LOOPS"], d["CPU_SAVERS"], d["OPTIMIZER_STATE"], d["HOST_SLICE"], d["CHECKPOINTS"]) == (
        ",".join(LOOPS), ",".join(CPU_SAVERS), True, HOST_SLICE, Training.own["checkpoints"])
    from llama_ckpt.suite.kinds import Claims

    assert defaults("08-claims")["OTHER_WEIGHTS"] is Claims.own["other_weights"] is False
    for slug in ("4c-compression", "4d-float16"):  # the other weights: off in the default run, like 08's
        assert defaults(slug)["OTHER_WEIGHTS"] is False
    d = defaults("4e-ocdbt")
    assert tuple(map(float, d["CLOUD_DELAYS_MS"])) == phases.CLOUD_DELAYS_MS and d["CLOUD_MODEL"] == phases.CLOUD_MODEL
    d = defaults("09-work-model")
    from llama_ckpt.suite.kinds import WorkModel

    assert (d["STATES"], d["APPROACHES"]) == (WorkModel.own["states"], WorkModel.own["approaches"])


def test_the_work_model_phase_kept_cards_and_checked_its_states(suite_run):
    """09 in the smoke run: the cost cards kept with the run, the one-core state on one CPU, the no-disk state's
    loads from memory on a tmpfs, and the notebook's checks and rankings rendered."""
    from llama_ckpt import fsutil
    from llama_ckpt.study.aims import AIM_APPROACHES
    from llama_ckpt.suite import states

    out, _ = suite_run
    rdir = out / "runs" / RUN
    cards = json.loads((rdir / "cost-cards.json").read_text())["cards"]
    assert {(c["approach"], c["step"]) for c in cards} >= {(a, s) for a in AIM_APPROACHES for s in ("save", "load")}
    one = read_results([states.results_path(rdir, states.STATES["one-core"])])
    assert one.environments[0]["machine"]["cores"] == 1 and one.ends
    assert {r["approach"] for r in one.measurements} == set(AIM_APPROACHES)
    # the disk beside each of its rounds, from the saves' start (issue 36, point 5); none in memory (below)
    assert one.disk_states and all(r["disk_state"]["round"] in {s["round"] for s in one.disk_states}
                                   for r in one.measurements)
    nb = nbformat.read(rdir / "09-work-model.ipynb", as_version=4)
    text = "".join(str(o.get("data", {})) for c in nb.cells for o in c.get("outputs", []))
    assert "one-core" in text and "within 25%" in text and "On this machine" in text
    if fsutil.in_memory(states.MEMORY_ROOT):
        mem = read_results([states.results_path(rdir, states.STATES["no-disk"])])
        assert not mem.disk_states and all(r["disk_state"] is None for r in mem.measurements)
        assert mem.measurements and all(r["medium"] == "memory" and r["load_cold"] is None and r["verified"]
                                        for r in mem.measurements)
        assert mem.environments[0]["machine"]["fs_type"] in fsutil.MEMORY_FS
        assert "No disk" in text and not states.memory_out(RUN).exists()  # its tmpfs directory removed


def test_the_other_weights_are_left_out_unless_asked(tmp_path):
    """The default run's cut: 4d measures its pair on the run's weights only, its end record says why there are
    no rows on the other kind (as its notebook shows), and 08 judges the other kind only when asked or when the
    run has rows of it. A phase without a pair for both kinds refuses the switch."""
    from llama_ckpt.errors import UserError
    from llama_ckpt.report import tables
    from llama_ckpt.suite.kinds import OTHER_NOT_ASKED, kind_of

    res = run("4d", model="tiny", repeats=1, out_dir=tmp_path, run_id="w", say=lambda s: None)
    assert res.rows and res.other == [] and {r["weights"] for r in res.rows} == {"float16-origin"}
    assert tables.other_weights_absent(res) == f"Not measured: {OTHER_NOT_ASKED}."
    assert phase_complete(tmp_path, "w", "4d-float16")  # both of its end records
    kinds = lambda **kw: [s.name for s, _n in kind_of("08", model="tiny", out_dir=tmp_path, run_id="w",
                                                     **kw)._kinds()]
    assert kinds() == ["tiny"] and kinds(other_weights=True) == ["tiny", "tiny:float32"]
    with pytest.raises(UserError, match="takes no parameter other_weights"):
        kind_of("4a", other_weights=True)


def test_the_training_phase_takes_at_most_its_checkpoints():
    """07's checkpoints per saver: the run's repeats, at most CHECKPOINTS (the default run's cut); a count under 1
    is refused in one line."""
    from llama_ckpt.errors import UserError
    from llama_ckpt.study.phases import TRAINING_CHECKPOINTS
    from llama_ckpt.suite.kinds import kind_of

    assert kind_of("07", repeats=5).repeats == TRAINING_CHECKPOINTS < 5
    assert kind_of("07", repeats=1).repeats == 1 and kind_of("07", repeats=5, checkpoints=5).repeats == 5
    with pytest.raises(UserError, match="checkpoints must be at least 1, got 0"):
        kind_of("07", repeats=3, checkpoints=0)


def test_summary_shows_how_far_the_disk_moved_over_the_run(suite_run):
    """Every phase on the disk took a short reference before each round (issue 36, point 5): the summary's table
    has one line per such phase, and its rendered notebook says it."""
    from llama_ckpt.report import machine, summary

    out, _ = suite_run
    s = summary.load(out, RUN)
    t = machine.disk_states_table(s.disk_states, s.machine())
    assert {"00-baselines", "05-formats"} <= set(t.index) and (t["rounds"] >= 1).all()
    assert t["write_MBps"].str.match(r"^[\d,]+ \[[\d,]+-[\d,]+\]$").all()
    nb = nbformat.read(out / "runs" / RUN / "99-summary.ipynb", as_version=4)
    text = "".join(str(o.get("data", {})) for c in nb.cells for o in c.get("outputs", []))
    assert "The disk beside each round" in text


def test_the_complete_run_renders_to_a_page_a_reader_can_read_and_project_from(suite_run, tmp_path):
    """`make results-doc` on the smoke run (issue 37, point 6): the page headed by the run id, both commits and
    the machine, the summary's sections with their charts beside it, no code and no pandas styles; the profile
    and cards beside it are what `project` reads; a run that is not there is refused in one line."""
    from llama_ckpt.report import publish

    out, _ = suite_run
    assert RUN in publish.complete_runs(out)
    page = publish.publish(out, tmp_path / "results")
    text = page.read_text()
    assert text.startswith(f"# Reference run `{RUN}`") and "Measured by commit" in text
    assert "**The machine**:" in text and "cores" in text
    assert "At the field's sizes" in text and "A published result re-derived" in text
    assert "```python" not in text and "<style" not in text  # inputs and styles left out
    charts = [p for p in (tmp_path / "results").glob("*.png") if f"]({p.name})" in text]
    assert charts and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in charts)
    r = subprocess.run([sys.executable, "-m", "llama_ckpt", "project", "--workload", "llama3-8b", "--json",
                        "--profile", str(tmp_path / "results" / publish.PROFILE),
                        "--cards", str(tmp_path / "results" / publish.CARDS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {p["approach"] for p in json.loads(r.stdout)["projections"]} >= {"safetensors", "ts+best"}
    with pytest.raises(UserError, match="no run no-such-run"):
        publish.publish(out, tmp_path / "other", "no-such-run")


def test_the_checkpoint_pattern_read_every_checkpoint_back_and_the_summary_projects_training(suite_run):
    """05's MLPerf checkpoint pattern: every checkpoint saved in a row read back, timed; the summary gives both in
    MLPerf's unit, and 07's savers at the workloads with the device-to-host rate said to be assumed."""
    from llama_ckpt.report import summary

    out, _ = suite_run
    s = summary.load(out, RUN)
    assert s.sustained and all(len(r["loads_s"]) == r["n_saves"] for r in s.sustained if r["verified"])
    text, t = s.back_to_back()
    assert "MLPerf's unit: save" in text and {"save_GiBps", "load_GiBps"} <= set(t.columns)
    text, t = s.training_projections()
    assert "**assumed**" in text and not t.empty
    assert set(t.index.get_level_values("workload")) == set(summary.PROJECTED)
    sync = t[t["mode"] == "sync"]
    assert (sync["blocking_s"] == sync["durable_s"]).all()  # a synchronous saver holds the loop for all of it


def test_a_run_measured_by_several_commits_says_which_phases_each_measured():
    a, b = "a" * 40, "b" * 40
    s = Summary(out_dir=Path("."), run_id="r", rows=[], envs=[{"git_commit": a, "phase": "00-baselines"},
                                                             {"git_commit": b, "phase": "05-formats"},
                                                             {"git_commit": a, "phase": "4a-concurrency"}],
                by_phase={}, complete={}, warnings=[])
    assert s.measured_by() == [(a, ["00-baselines", "4a-concurrency"]), (b, ["05-formats"])]
    assert s._commits_line() == (f"**measured by more than one commit**: git {a} (00-baselines, 4a-concurrency); "
                                 f"git {b} (05-formats)")
    s.envs = s.envs[:1]
    assert s._commits_line() == f"git {a}"


def test_the_notebooks_kernels_import_the_runners_own_package(monkeypatch):
    here = str(Path(suite.__file__).resolve().parent.parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", here]))
    suite._same_package_in_kernels()
    assert os.environ["PYTHONPATH"] == os.pathsep.join([here, "/elsewhere"])
    suite._same_package_in_kernels()  # once is enough
    assert os.environ["PYTHONPATH"] == os.pathsep.join([here, "/elsewhere"])
