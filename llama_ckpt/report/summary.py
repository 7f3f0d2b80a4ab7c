"""The summary of one suite run: the 8-way table and chart, the sweep charts,
the claims table, the guide's figures beside ours, and findings computed from
the data."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..registry import SAVES_AS, names
from ..results import GIT_COMMIT, MachineProfile, change, comparison_table, disk_rates, fmt_bytes, is_valid, \
    read_results, summarize
from ..results.text import BASELINE
from ..study.aims import AIM_APPROACHES, FORMAT_AIMS, NO_DISK_AIM, NO_DISK_BEST
from ..study.claims import (GUIDE_EIGHT, GUIDE_FIGURES, HOLDS, FAILS, MIN_REPEATS, OTHER_WEIGHTS_CLAIMS, UNSURE,
                             judge_both, judge_cloud, sample_sets)
from ..study.phases import COMPARE, PHASES
from ..results import projection, work
from ..study.runs import cloud_rows, latest_run, phase_complete, run_dir, run_results, shared_rows, state_results_path
from ..units import GiB
from . import charts as plots
from . import machine as machine_report
from . import tables as report
from . import training as train_report
from . import work as work_report

CHART_NAME = "8way_performance_comparison.png"

PROJECTED = ("llama3-8b", "llama3-70b")  # the MLPerf Storage workloads the summary projects to (one node; per node)


@dataclass
class Summary:
    out_dir: Path
    run_id: str
    rows: list[dict]
    envs: list[dict]
    by_phase: dict[str, list[dict]]  # phase slug -> its measurement rows
    complete: dict[str, bool]  # phase slug -> its results file ended properly
    warnings: list[str]
    cloud: list[dict] = field(default_factory=list)  # 4e's rows on S3 (every delay)
    training: list[dict] = field(default_factory=list)  # 07's checkpoints inside the training loop
    other: list[dict] = field(default_factory=list)  # rows on the preset's other weights (claims 3 and 4)
    sustained: list[dict] = field(default_factory=list)  # 05's checkpoints saved back to back
    disk_states: list[dict] = field(default_factory=list)  # the disk reference beside each round of every phase

    @property
    def guide_rows(self) -> list[dict]:
        return [r for r in self.rows if r["approach"] in GUIDE_EIGHT]

    def env(self) -> dict:
        """The disk reference: the run's (one shared profile); the median over its phases' where each measured its
        own (on S3, or results written before the suite profiled its machine)."""
        out = {}
        for key in ("reference_write_s", "reference_read_s", "reference_bytes"):
            vals = [e[key] for e in self.envs if e.get(key)]
            out[key] = statistics.median(vals) if vals else None
        return out

    def measured_by(self) -> list[tuple[str, list[str]]]:
        """Each git commit that measured part of the run, with the phases it measured, in the order first met
        (one commit: the whole run's; several: a run resumed, or one whose code changed while it ran)."""
        out: dict[str, list[str]] = {}
        for e in self.envs:
            phases = out.setdefault(e.get("git_commit") or "unrecorded", [])
            if e.get("phase") and e["phase"] not in phases:
                phases.append(e["phase"])
        return list(out.items())

    def status(self) -> str:
        lines = [f"Run `{self.run_id}` in `{run_dir(self.out_dir, self.run_id)}`: "
                 f"{len(self.rows)} measurement rows, {sum(is_valid(r) for r in self.rows)} valid"
                 + (f"; {len(self.training)} checkpoints inside the training loop, "
                    f"{sum(bool(r.get('verified')) for r in self.training)} verified." if self.training else ".")]
        if self.rows:
            other = {r["weights"] for r in self.other if r.get("weights")}
            lines.append(f"- model `{self.model}`, **{self.weights or 'unrecorded'} weights**"
                         + (f"; the compression and float16 claims also on {', '.join(sorted(other))} weights "
                            f"({len(self.other)} rows)" if other else "") + ".")
        for p in PHASES.values():
            state = ("complete" if self.complete.get(p.slug) else
                     "**incomplete** (interrupted: its rows are shown but the phase should be run again)"
                     if p.slug in self.complete else "not run")
            lines.append(f"- {p.slug}: {state}")
        lines += [f"- warning: {w}" for w in self.warnings]
        if self.envs:
            e = self.envs[0]
            lines.append(f"- machine: {e.get('cpu_model')}, {e.get('n_cpus')} CPUs, "
                         f"{e.get('ram_bytes', 0) / GiB:.0f} GiB; output on {e.get('out_fs_type')}; "
                         f"torch {e.get('torch')}, tensorstore {e.get('tensorstore')}; " + self._commits_line())
        lines.append(f"- this summary computed by git {GIT_COMMIT}")
        return "\n".join(lines)

    def _commits_line(self) -> str:
        by = self.measured_by()
        if len(by) == 1:
            return f"git {by[0][0]}"
        return ("**measured by more than one commit**: " + "; ".join(f"git {c} ({', '.join(ps) or 'no phase named'})"
                                                                     for c, ps in by))

    def eight_way_table(self) -> pd.DataFrame:
        t = report.table(self.guide_rows)
        ref = summarize(self.guide_rows).get("pytorch")
        if ref is not None:
            summ = summarize(self.guide_rows)
            for key, col in (("save_s", "save_vs_pytorch_%"), ("load_s", "load_vs_pytorch_%"),
                             ("bytes_on_disk", "size_vs_pytorch_%")):
                t[col] = [change(summ[n][key].median, ref[key].median) for n in t.index]
        order = [n for n in GUIDE_EIGHT if n in t.index]
        return t.loc[order]

    def eight_way_text(self) -> str:
        rows = sorted(self.guide_rows, key=lambda r: GUIDE_EIGHT.index(r["approach"]))
        return comparison_table(rows)

    def eight_way_chart(self):
        fig = plots.comparison(self.guide_rows, self.env(), title="The guide's eight approaches",
                               order=list(GUIDE_EIGHT))
        plots.save(fig, Path(self.out_dir) / CHART_NAME)
        plots.save(fig, run_dir(self.out_dir, self.run_id) / "figures" / CHART_NAME)
        return fig

    def sweep_charts(self) -> list:
        figs = []
        for p in PHASES.values():
            rows = [r for r in self.by_phase.get(p.slug, []) if is_valid(r)]
            if not p.axis or not rows:
                continue
            fig = plots.sweep(rows, report.order(rows), report.labels(rows, p.axis), p.axis,
                              title=f"{p.id} {p.title}: sweep of {p.axis}")
            plots.save(fig, run_dir(self.out_dir, self.run_id) / "figures" / f"{p.slug}-sweep.png")
            figs.append(fig)
        return figs

    @property
    def model(self) -> str:
        return self.rows[0]["model"] if self.rows else ""

    @property
    def weights(self) -> str:
        return self.rows[0].get("weights") or "" if self.rows else ""

    def claims(self) -> list[dict]:
        """Every claim on this run's weights, claims 3 and 4 again on the
        other weights where the run measured them, and claim 9 on S3; each
        with the weights it was judged on and how often it held in earlier
        runs of the same commit and model."""
        out = claims_on(self.guide_rows, self.cloud, self.other)
        earlier = self.earlier_runs()
        for c in out:
            past = [v for v in (e.get((c["claim"], c["weights"])) for e in earlier.values()) if v]
            c["earlier runs"] = f"held in {sum(v == HOLDS for v in past)} of {len(past)}" if past else "none"
        return out

    def earlier_runs(self) -> dict[str, dict[tuple, str]]:
        """Each earlier run in OUT of the same git commit and model: its verdict per (claim, weights)."""
        commit = next((e.get("git_commit") for e in self.envs if e.get("git_commit")), None)
        out = {}
        runs = Path(self.out_dir) / "runs"
        for rid in sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() and commit else []:
            if rid >= self.run_id:
                continue
            try:
                other = load(self.out_dir, rid)
            except UserError:
                continue
            if other.model != self.model or commit not in {e.get("git_commit") for e in other.envs}:
                continue
            out[rid] = {(c["claim"], c["weights"]): c["verdict"]
                        for c in claims_on(other.guide_rows, other.cloud, other.other)}
        return out

    def claims_table(self) -> pd.DataFrame:
        cols = ["claim", "weights", "verdict", "repeats", "earlier runs", "text", "measured", "dtypes", "guide"]
        return pd.DataFrame(self.claims())[cols].set_index(["claim", "weights"]).rename(
            columns={"dtypes": "stored dtypes differ", "guide": "guide's figures"})

    def claims_view(self):
        """The claims table for reading: every cell in full (pandas would cut
        long text to "..."), text left-aligned and wrapped."""
        return self.claims_table().style.set_properties(**{"text-align": "left", "white-space": "normal",
                                                           "vertical-align": "top"})

    def guide_table(self) -> pd.DataFrame:
        """The guide's figures and ours, as changes against the baseline (``tensorstore``)."""
        summ = summarize(self.guide_rows)
        base = summ.get(BASELINE)
        recs = []
        for n in GUIDE_EIGHT:
            rec = {"approach": n, "dtype": summ[n]["stored_dtype"] if n in summ else None}
            for metric, key, g in (("save", "save_s", "save_s"), ("load", "load_s", "load_s"),
                                   ("size", "bytes_on_disk", "size_gb")):
                rec[f"{metric}: guide %"] = change(GUIDE_FIGURES[g][n], GUIDE_FIGURES[g][BASELINE])
                rec[f"{metric}: ours %"] = (change(summ[n][key].median, base[key].median)
                                            if n in summ and base else None)
            recs.append(rec)
        return pd.DataFrame(recs).set_index("approach") if recs else pd.DataFrame()

    @property
    def registered_rows(self) -> list[dict]:
        return [r for r in self.rows if r["approach"] in names()]

    def all_table(self) -> pd.DataFrame:
        """Every registered approach measured in this run, with its throughput
        as a share of the disk reference."""
        t = report.table(self.registered_rows)
        if t.empty:
            return t
        share = report.disk_share(self.registered_rows, self.env_rates())
        t["save_share_of_disk"] = share["save_share_of_disk"]
        t["load_share_of_disk"] = share["load_share_of_disk"]
        return t.loc[[n for n in names() if n in t.index]]

    def all_chart(self):
        summ = summarize(self.registered_rows)
        fig = plots.comparison(self.registered_rows, self.env(), title="Every approach",
                               order=[n for n in names() if n in summ])
        plots.save(fig, run_dir(self.out_dir, self.run_id) / "figures" / "all-approaches.png")
        return fig

    def machine(self) -> MachineProfile | None:
        """The run's machine profile (measured by its first phase, shared by every phase of the run)."""
        return next((MachineProfile.of_env(e) for e in self.envs if e.get("machine")), None)

    def no_disk(self) -> tuple[str, pd.DataFrame]:
        """What to pick when the disk is not the limit: 09's no-disk state (the checkpoints on a tmpfs, loads from
        memory), ranked by the suite's rule as :meth:`ranking` ranks this machine's disk; a line saying why there
        is none where 09 did not measure that state."""
        path = state_results_path(run_dir(self.out_dir, self.run_id), "no-disk")
        rows = read_results([path]).measurements if path.is_file() else []
        if not rows:
            return ("09-work-model did not measure the no-disk state in this run (`09.STATES`), so there is no "
                    "ranking without the disk.", pd.DataFrame())
        rank = work_report.ranking(rows)
        lines = [f"- **fastest {step}** with no disk: `{rank.loc[step].iloc[0]['approach']}` "
                 f"({rank.loc[step].iloc[0]['median_s']:.3g} s)"
                 + (f"; against `{rank.loc[step].iloc[1]['approach']}`: {rank.loc[step].iloc[0]['vs_next']}"
                    if len(rank.loc[step]) > 1 else "") + "."
                 for step in ("save", "load") if step in rank.index.get_level_values(0)]
        lines += self._no_disk_aim(rows)
        return ("**When the disk is not the limit** (09's no-disk state: the checkpoints on a tmpfs, loads from "
                f"memory; {len({r['approach'] for r in rows})} approaches):\n\n" + "\n".join(lines)), rank

    @staticmethod
    def _no_disk_aim(rows: list[dict]) -> list[str]:
        """Issue 36's aim for the recommended TensorStore configuration, one line: its medians over the fastest
        approach's that stores the same dtype (like with like: a float16 file moves half the bytes)."""
        summ = summarize([r for r in rows if not r.get("world_size")])
        if NO_DISK_BEST not in summ:
            return []
        dtype, parts = summ[NO_DISK_BEST]["stored_dtype"], []
        for step in ("save", "load"):
            meds = {n: st[f"{step}_s"].median for n, st in summ.items()
                    if st["stored_dtype"] == dtype and (step == "load" or n not in SAVES_AS)}
            others = [n for n in meds if n != NO_DISK_BEST]
            if not others:
                continue
            first = min(others, key=meds.get)  # the fastest other: below 1x, ts+best is the fastest
            ratio = meds[NO_DISK_BEST] / meds[first]
            parts.append(f"{step} {meds[NO_DISK_BEST]:.3g} s, {ratio:.2f}x `{first}` "
                         + ("(met)" if ratio <= NO_DISK_AIM else "(not met)"))
        if not parts:
            return []
        fewest = min(st["n"] for st in summ.values() if st["stored_dtype"] == dtype)
        few = f" (medians of as few as {fewest} repeats; the aim asks {MIN_REPEATS})" if fewest < MIN_REPEATS else ""
        return [f"- `{NO_DISK_BEST}`, the suite's TensorStore recommendation (aim: within {NO_DISK_AIM}x of the "
                f"fastest other {dtype or 'same-dtype'} approach): " + "; ".join(parts) + few
                + ". Why its load from memory trails: docs/decisions.md#ts-best-from-memory."]

    def cost_cards(self) -> list:
        """The run's cost cards (``cost-cards.json``, kept by 05 and 09); none where neither ran."""
        path = run_dir(self.out_dir, self.run_id) / work_report.CARDS_FILE
        try:
            return work.read_cards([path])[0] if path.is_file() else []
        except UserError:  # cards of an older form of the model: made again from the rows of 05, then 09's
            got = {(c.approach, c.step): c for phase in ("05-formats", "09-work-model")
                   for c in work.cards(self.by_phase.get(phase, []), self.machine())}
            return list(got.values())

    def where_time_goes(self):
        """Every approach with a cost card, its time split into the work model's parts (05's chart, for the run)."""
        title = "Where the time goes (the work model's parts; cost cards of 05 and 09)"
        return work_report.where_time_goes(self.cost_cards(), self.machine(), title=title)

    def projections(self, workloads: tuple[str, ...] = PROJECTED) -> tuple[str, pd.DataFrame]:
        """The main approaches projected to MLPerf Storage's checkpoint workloads from the run's cost cards, this
        machine's profile as one node (docs/decisions.md#projection): a sentence and the table."""
        cards = [c for c in self.cost_cards() if c.approach in AIM_APPROACHES]
        t = work_report.projection_table(cards, self.machine(), workloads)
        if t.empty:
            return ("No projection: this run kept no cost cards of the main approaches (05 or 09) or measured no "
                    "machine profile.", t)
        ws = [projection.WORKLOADS[n] for n in workloads]
        said = "; ".join(f"`{w.name}`: {w.total_bytes / 2**30:,.0f} GiB on {w.ranks} ranks, {w.nodes} node(s) of "
                         f"{w.on_node}, the slowest rank writing {w.rank_bytes / 1e9:.1f} GB" for w in ws)
        text = (f"Projected from this run's cost cards with this machine as one node ({said}). Measured: "
                + "; ".join(projection.MEASURED) + ". Assumed, not measured: " + "; ".join(projection.ASSUMED)
                + ". The model these stand on was checked on this machine in 09's states (its size state: "
                "OpenLLaMA-3B predicted from `small`'s cards); a projection across nodes is not checked here.")
        return text, t

    def sharded_check(self) -> tuple[str, pd.DataFrame]:
        """The projection's sharing of a node checked on this machine: 06's sharded saves and loads on 2 and 4
        ranks against their projection from the same approach's one-rank rows: a sentence and the table."""
        t = work_report.sharded_check(self.by_phase.get("06-distributed", []), self.machine())
        if t.empty:
            return "06 measured no sharded rows on one and several ranks in this run: the sharing is not checked.", t
        n, ok = len(t), int(t["within"].sum())
        return (f"**The check across ranks**: {ok} of {n} sharded saves and loads of 06 within 25% of their "
                "projection from the same approach's one-rank rows (this machine as the node, its ranks sharing "
                "it; measured over predicted, less 1)."), t

    def training_projections(self, workloads: tuple[str, ...] = PROJECTED) -> tuple[str, pd.DataFrame]:
        """07's savers projected to the workloads (docs/decisions.md#projection-training): the loop's blocking
        time per checkpoint, the time until durable and the interval for checkpoints to take 1% of a run, per
        saver and workload: a sentence and the table."""
        loop = "accelerator"  # an accelerator's loop is what the field runs; a CPU loop copies nothing off a device
        savers = train_report.per_saver(self.training, loop) if loop in train_report.loops(self.training) else {}
        prof, cards = self.machine(), self.cost_cards()  # read once, for every workload
        recs = [{"workload": name, **r} for name in workloads if prof is not None
                for r in projection.training(savers, cards, prof, projection.WORKLOADS[name])]
        if not recs:
            return ("No training projection: no saver of 07's accelerator-bound loop has a save card of its format "
                    "(05 or 09) and the rates the work model needs in this run's machine profile.", pd.DataFrame())
        left = [n for n, s in savers.items() if s.get("n") and n not in {r["saver"] for r in recs}]
        t = pd.DataFrame(recs).set_index(["workload", "saver"])
        t["interval for 1%"] = t["interval for 1%"].map(train_report.fmt_duration)
        text = (f"07's savers in {train_report.LOOP_TITLES.get(loop, loop)} at the workloads' slowest rank: a "
                "saver's state first comes off the device, a device-to-host copy (`D2H`) at "
                f"{projection.D2H_ASSUMED_Bps / 1e9:.0f} GB/s, **assumed** (this run had no accelerator to measure "
                "it); a synchronous saver then holds the loop for its whole save (the projection above), one in the "
                "background for the copy and the rest of the blocking it had in 07, per byte. `interval for 1%`: the "
                "training time between checkpoints for them to take 1% of the run, and no shorter than the save's "
                "background "
                "(`docs/decisions.md#projection-training`). Not counted: the slowdown of the steps while a save "
                "is in flight, which 07 measures on this machine's cores. Nothing here checks it: this machine "
                "has no accelerator and no 8B run."
                + (f" Left out (no save card of its format, or a rate the model needs): {', '.join(left)}."
                   if left else ""))
        return text, t.round(3)

    def published_check(self) -> tuple[str, pd.DataFrame]:
        """One published MLPerf Storage result re-derived from its system description
        (docs/decisions.md#projection-published): a sentence and the table."""
        pub, prof = projection.PUBLISHED, self.machine()
        got = projection.published_check(self.cost_cards(), prof) if prof is not None else []
        head = (f"**A published result re-derived**: {pub.name}, `{pub.workload}` ({pub.source}); `{pub.approach}`'s "
                f"cards on its node as described: {pub.cores} cores, the drive at {pub.write_Bps / 1e9:.1f} GB/s "
                f"write and {pub.read_Bps / 1e9:.1f} GB/s read ({pub.rates_source}). Missing from the description: "
                + "; ".join(pub.missing) + ".")
        if not got:
            return head + (f" Not re-derived: no `{pub.approach}` cost card in this run, no machine profile, or one "
                           "without a rate the work model needs."), pd.DataFrame()
        t = pd.DataFrame(got).set_index("step")
        ok = int(t["within"].sum())
        return (head + f" {ok} of {len(t)} within 25% (published over projected, less 1)."), t.round(3)

    def bounds(self) -> pd.DataFrame:
        """Every registered approach's save and load against the shortest time
        its counted work can take on this machine, and the limit that sets it."""
        measured = {r["approach"] for r in self.registered_rows}
        return machine_report.bounds_table(self.registered_rows, self.machine(), [n for n in names() if n in measured])

    def answer(self) -> str:
        """What to pick for each job on this machine, first: the ranking's
        winner, how sure (against the runner-up, by the claims' rule), and the
        limit that bounds it here (from the machine profile)."""
        rank = self.ranking()
        if rank.empty:
            return "No valid rows in this run: nothing to pick from."
        bounds = self.bounds()
        lines = []
        for job, step in (("fastest save", "save"), ("fastest cold load", "load"), ("smallest without loss", None)):
            if job not in rank.index.get_level_values(0):
                continue
            top = rank.loc[job]
            first = top.iloc[0]
            line = f"- **{job}**: `{first['approach']}` ({first['dtype']}, {first['median']}"
            line += f", {first['share_of_disk']} of the disk reference)" if first["share_of_disk"] else ")"
            if len(top) > 1:
                line += f"; against `{top.iloc[1]['approach']}`: {first['vs_next']}"
            if step and not bounds.empty and first["approach"] in bounds.index:
                b = bounds.loc[first["approach"]]
                if b[f"{step}_binding"] is not None and b[f"{step}_x_bound"] is not None:
                    line += (f"; bound here by **{b[f'{step}_binding']}** (it takes {float(b[f'{step}_x_bound']):.2f}x "
                             "the shortest time its work can take on this machine)")
            lines.append(line + ".")
        no_disk, rank = self.no_disk()
        return ("**The answer on this machine, from this run** (the tables below back it; \"not told apart\" means "
                "the runner-up may be as good):\n\n" + "\n".join(lines) + ("" if rank.empty else "\n\n" + no_disk))

    def back_to_back(self) -> tuple[str, pd.DataFrame]:
        """05's checkpoints in MLPerf's pattern (saved back to back, read back cold) against the same approaches'
        isolated saves and loads in 05 (its own rows and those it shared), as 05's notebook shows them: findings
        and table."""
        rows = self.by_phase.get("05-formats", [])
        return (machine_report.sustained_findings(self.sustained, rows),
                machine_report.sustained_table(self.sustained, rows))

    def bounds_findings(self) -> str:
        return machine_report.bounds_findings(self.registered_rows, self.machine())

    def env_rates(self) -> dict:
        """The disk's rates every share of the disk reads (``results.profile.disk_rates``: the run's profile's,
        else the storage reference's)."""
        prof = self.machine()
        w, r = (prof.write_Bps(), prof.read_Bps()) if prof is not None else disk_rates(self.env())
        return {"reference_write_Bps": w, "reference_read_Bps": r} if w and r else {}

    def ranking(self, top: int = 5) -> pd.DataFrame:
        """The best registered approaches for three jobs: fastest save, fastest
        cold load, smallest on disk without loss (bit-exact to the source). A
        loader of another approach's file (``registry.SAVES_AS``) is ranked
        among loads only: its save and its file are that approach's."""
        summ = summarize(self.registered_rows)
        savers = [n for n in summ if n not in SAVES_AS]
        lossless = [n for n in savers if summ[n]["max_abs_err"] == 0]
        jobs = {"fastest save": (savers, "save_s", "s"), "fastest cold load": (list(summ), "load_s", "s"),
                "smallest without loss": (lossless, "bytes_on_disk", "B")}
        rates = self.env_rates()
        share = {"save_s": ("save_Bps", rates.get("reference_write_Bps")),
                 "load_s": ("load_Bps", rates.get("reference_read_Bps"))}
        samples = sample_sets(self.registered_rows)
        recs = []
        for job, (contenders, key, unit) in jobs.items():
            ranked = sorted(contenders, key=lambda n: summ[n][key].median)
            for rank, n in enumerate(ranked[:top], 1):
                v = summ[n][key].median
                rate, ref = share.get(key, (None, None))
                recs.append({"job": job, "rank": rank, "approach": n, "dtype": summ[n]["stored_dtype"],
                             "median": fmt_bytes(v) if unit == "B" else f"{v:.3g} s",
                             "share_of_disk": f"{summ[n][rate].median / ref:.0%}" if rate and ref else "",
                             "vs_next": report.vs_next(samples, n, ranked[rank] if rank < len(ranked) else None, key)})
        return pd.DataFrame(recs).set_index(["job", "rank"]) if recs else pd.DataFrame()

    def aim(self) -> pd.DataFrame:
        """The aims: the fastest cold load's throughput over the disk
        reference's read; the format aims (:data:`llama_ckpt.study.aims.FORMAT_AIMS`:
        ts+best against pytorch-fp32 and safetensors, ts+best16 against
        pytorch), ratios of medians (below 1 = ts+best faster). From
        05-formats' rows, whose repeats were interleaved together (every
        registered approach's rows where 05 did not run)."""
        summ = summarize(self.by_phase.get("05-formats") or self.registered_rows)
        recs = []
        rates = self.env_rates()
        if summ and rates:
            best = max(summ, key=lambda n: summ[n]["load_Bps"].median)
            recs.append({"ratio": f"fastest cold load ({best}): its bytes/s over the disk's read",
                         "share_of_disk": summ[best]["load_Bps"].median / rates["reference_read_Bps"],
                         "repeats": str(summ[best]["n"])})
        for a, b in FORMAT_AIMS:
            if a in summ and b in summ:
                recs.append({"ratio": f"{a} / {b}",
                             "save": summ[a]["save_s"].median / summ[b]["save_s"].median,
                             "load": summ[a]["load_s"].median / summ[b]["load_s"].median,
                             "size": summ[a]["bytes_on_disk"].median / summ[b]["bytes_on_disk"].median,
                             "repeats": f"{summ[a]['n']} / {summ[b]['n']}"})
        cols = ["save", "load", "size", "share_of_disk", "repeats"]
        return pd.DataFrame(recs, columns=["ratio"] + cols).set_index("ratio") if recs else pd.DataFrame()

    def memory(self) -> pd.DataFrame:
        """Peak memory of every registered approach, as multiples of the float32 model."""
        t = report.memory_table(self.registered_rows)
        return t.loc[[n for n in names() if n in t.index]] if not t.empty else t

    def training_loop(self) -> str | None:
        """The loop the summary ranks the savers in: the accelerator-bound one where the run has it (the loop
        asynchronous saving is used in), else the CPU-bound one."""
        loops = train_report.loops(self.training)
        return "accelerator" if "accelerator" in loops else (loops[0] if loops else None)

    def training_ranking(self) -> pd.DataFrame:
        """For training (07), in :meth:`training_loop`: least blocking time, then time until durable,
        with the loop's slowdown and the extra memory beside them."""
        return train_report.ranking(self.training, self.training_loop())

    def scaling(self) -> pd.DataFrame:
        """06's sharded rows: checkpoint time and aggregate throughput by ranks."""
        return report.scaling_table(self.by_phase.get("06-distributed", []))

    def scaling_chart(self):
        t = self.scaling()
        if t.empty:
            return None
        fig = plots.scaling(t, title="sharded checkpoints by ranks")
        plots.save(fig, run_dir(self.out_dir, self.run_id) / "figures" / "scaling.png")
        return fig

    def save_phases(self) -> pd.DataFrame:
        """Where the save time of the aim's approaches goes (the 05 phase's rows)."""
        return report.save_phases_table(self.by_phase.get("05-formats", []), list(AIM_APPROACHES))

    def findings(self) -> str:
        summ = summarize(self.guide_rows)
        if not summ:
            return "No valid measurement of the guide's approaches in this run."
        claims = self.claims()
        def label(c):
            return str(c["claim"]) + (f" (on {c['weights']} weights)" if c["weights"] not in (self.weights, "-")
                                      else "")
        count = {v: [label(c) for c in claims if c["verdict"] == v] for v in (HOLDS, FAILS, UNSURE)}
        out = [f"Of the guide's {len({c['claim'] for c in claims})} claims, on this run ({self.weights} weights; "
               f"{', '.join(map(str, OTHER_WEIGHTS_CLAIMS))} also on the other kind where measured): "
               f"holds: {', '.join(count[HOLDS]) or 'none'}; does not hold: {', '.join(count[FAILS]) or 'none'}; "
               f"inconclusive: {', '.join(count[UNSURE]) or 'none'}."]
        for key, what in (("save_s", "save"), ("load_s", "cold load"), ("bytes_on_disk", "size")):
            ranked = sorted(summ, key=lambda n: summ[n][key].median)
            show = (lambda v: fmt_bytes(v)) if key == "bytes_on_disk" else (lambda v: f"{v:.3g} s")
            out.append(f"- {what}: " + " < ".join(f"{n} ({show(summ[n][key].median)})" for n in ranked) + ".")
        if "pytorch" in summ and "ts+float16" in summ:
            p, t = summ["pytorch"], summ["ts+float16"]
            out.append(f"- Like for like in float16: ts+float16 saves in "
                       f"{t['save_s'].median / p['save_s'].median:.2f}x and loads in "
                       f"{t['load_s'].median / p['load_s'].median:.2f}x pytorch's time.")
        rates = self.env_rates()
        every = summarize(self.registered_rows)
        if rates and every:
            w, r = rates["reference_write_Bps"], rates["reference_read_Bps"]
            best_s = max(every, key=lambda n: every[n]["save_Bps"].median)
            best_l = max(every, key=lambda n: every[n]["load_Bps"].median)
            out.append(f"- The disk wrote {w / 1e6:.0f} MB/s and read {r / 1e6:.0f} MB/s at its best (the fastest of "
                       f"one stream, parallel threads and a mapping); of every approach, the fastest writer "
                       f"({best_s}) reached "
                       f"{every[best_s]['save_Bps'].median / w:.0%} of that and the fastest reader ({best_l}) "
                       f"{every[best_l]['load_Bps'].median / r:.0%}.")
        aim = self.aim()
        pairs = aim.drop(index=[i for i in aim.index if "disk" in i]) if not aim.empty else aim
        if not pairs.empty:
            out.append("- ts+best's aim (ratios of medians, below 1 = faster): " + "; ".join(
                f"{idx} save {r['save']:.2f}x, load {r['load']:.2f}x" for idx, r in pairs.iterrows()) + ".")
        if self.training:
            rank = self.training_ranking()
            if not rank.empty:
                top = rank.iloc[0]
                out.append(f"- For training (07, {train_report.LOOP_TITLES.get(self.training_loop())}): {top['saver']} "
                           f"blocks the loop least, {top['blocking']} per checkpoint (durable after {top['durable']}, "
                           f"steps in flight {top['slowdown']}).")
        missing = [n for n in GUIDE_EIGHT if n not in summ]
        if missing:
            out.append(f"- Not measured (or not valid) in this run: {', '.join(missing)}.")
        return "\n".join(out)


def claims_on(rows: list[dict], cloud: list[dict], other: list[dict]) -> list[dict]:
    """The claims on ``rows`` and ``other`` (:func:`llama_ckpt.study.claims.judge_both`), and claim 9 on ``cloud``."""
    cloud_weights = (cloud[0].get("weights") or "-") if cloud else "-"
    return judge_both(rows, other) + [dict(judge_cloud(cloud), weights=cloud_weights)]


def load(out_dir: str | Path, run_id: str = "") -> Summary:
    run_id = run_id or latest_run(out_dir)
    if not run_id:
        raise UserError(f"no run in {Path(out_dir) / 'runs'}: run the phases first (make run-all)")
    loaded, files = run_results(out_dir, run_id)
    if not files:
        raise UserError(f"run {run_id}: no results in {run_dir(out_dir, run_id) / 'results'}")
    by_phase, complete = {}, {}
    # the run's weights: its phases' first environment records (4c and 4d add the other kind after)
    firsts = [read_results([f]).environments[:1] for f in files]
    models = [e[0]["model"] for e in firsts if e and e[0].get("model")]
    model = max(set(models), key=models.count) if models else None
    envs = []  # each phase's environment records, named by their phase where the driver left it out (06, 07)
    for f in files:
        one = read_results([f])
        by_phase[f.stem] = [r for r in one.measurements if r["model"] == model]
        complete[f.stem] = phase_complete(out_dir, run_id, f.stem)
        envs += [e if e.get("phase") else dict(e, phase=f.stem) for e in one.environments]
    rows = [r for r in loaded.measurements if r["model"] == model]
    other = [r for r in loaded.measurements if r["model"] != model and not r.get("world_size")]
    for p in PHASES.values():  # a phase's rows include the configurations it shared with other phases
        if p.slug in by_phase and p.kind == COMPARE:
            shared = shared_rows(out_dir, run_id, p.slug, p.approaches(), model)
            by_phase[p.slug] += [r for rs in shared.values() for r in rs]
    return Summary(Path(out_dir), run_id, rows, envs, by_phase, complete,
                   loaded.warnings, cloud_rows(out_dir, run_id), loaded.training, other,
                   [r for r in loaded.sustained if r["model"] == model],
                   [s for s in loaded.disk_states if s.get("model") == model])
