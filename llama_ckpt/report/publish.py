"""The reference run a reader can read without running anything (issue 37): the latest complete run's executed
summary, its projections included, rendered to Markdown with its charts under ``docs/results/``, headed by the
machine's profile, the commit that measured it and the run id (``make results-doc``)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from nbconvert import MarkdownExporter

from ..errors import Parser, UserError
from ..results import GIT_COMMIT, work
from ..study.phases import PHASES
from ..study.runs import notebook_ran_clean, phase_complete, run_dir
from . import summary as summary_report
from .machine import machine_line

SUMMARY = "99-summary.ipynb"
PAGE = "README.md"  # docs/results/README.md: GitHub shows it for the folder
PROFILE, CARDS = "machine-profile.json", "cost-cards.json"
MAX_BYTES = 5 * 2**20  # what the folder may hold: the repository carries it
STYLE = re.compile(r"<style[^>]*>.*?</style>\n?", re.S)


def complete_runs(out_dir: str | Path) -> list[str]:
    """The runs under ``out_dir`` whose every phase is complete and whose summary ran to its end, oldest first."""
    runs = Path(out_dir) / "runs"
    if not runs.is_dir():
        return []
    return [d.name for d in sorted(runs.iterdir()) if notebook_ran_clean(d / SUMMARY)
            and all(phase_complete(out_dir, d.name, p.slug) for p in PHASES.values())]


def _clear(dest: Path) -> None:
    """Empty ``dest`` of an earlier page (its README.md a rendered run, the charts it links, the profile and the
    cards): refused where it holds anything else, or anything at all without such a page."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise UserError(f"--dest {dest}: not a directory")
    page = dest / PAGE
    text = page.read_text(errors="replace") if page.is_file() else ""
    ours = {PAGE, PROFILE, CARDS} | set(re.findall(r"\]\((output_[\w.-]+\.png)\)", text))
    others = sorted(p.name for p in dest.iterdir() if p.name not in ours or not p.is_file())
    if others or (any(dest.iterdir()) and not text.startswith("# Reference run")):
        raise UserError(f"--dest {dest}: holds files that are not a rendered run ({', '.join(others) or PAGE}); "
                        "give an empty or new directory")
    for p in dest.iterdir():
        p.unlink()


def _short(commit: str | None) -> str:
    """A commit as the page shows it: 12 hex digits, and ``-dirty`` where the tree had changes."""
    if not commit:
        return "unrecorded"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def publish(out_dir: str | Path, dest: str | Path, run_id: str = "") -> Path:
    """Render ``run_id`` (default: the latest complete run in ``out_dir``) to ``dest``/README.md and its charts
    beside it, replacing what ``dest`` held; the page and its charts at most :data:`MAX_BYTES`."""
    done = complete_runs(out_dir)
    run_id = run_id or (done[-1] if done else "")
    if not run_id:
        raise UserError(f"no complete run in {Path(out_dir) / 'runs'} (every phase complete and the summary "
                        "run to its end): run `make run-all` first")
    if not run_dir(out_dir, run_id).is_dir():
        raise UserError(f"no run {run_id} in {Path(out_dir) / 'runs'}")
    if run_id not in done:
        raise UserError(f"run {run_id} in {out_dir} is not complete (a phase unfinished, or its summary not run "
                        "to its end)")
    exporter = MarkdownExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, resources = exporter.from_filename(str(run_dir(out_dir, run_id) / SUMMARY))
    charts = resources.get("outputs") or {}
    s = summary_report.load(out_dir, run_id)
    prof = s.machine()
    by = s.measured_by()
    measured_by = ("an unrecorded commit" if not by else f"commit `{_short(by[0][0])}`" if len(by) == 1 else
                   "commits " + ", ".join(f"`{_short(c)}` ({', '.join(ps) or 'no phase named'})" for c, ps in by))
    where = str(run_dir(out_dir, run_id))
    cpu = next((e.get("cpu_model") for e in s.envs if e.get("cpu_model")), None)
    files = {}
    if prof is not None:  # what `project` reads, so a reader can project from this run without running it
        files[PROFILE] = json.dumps(prof.to_dict(), indent=1).encode()
        cards = s.cost_cards()
        if cards:
            files[CARDS] = work.cards_json(cards, prof, run_id).encode()
    head = [f"# Reference run `{run_id}`", "",
            f"The summary of one complete `make run-all` (model `{s.model}`), rendered by `make results-doc` so that "
            f"it can be read without running anything. Measured by {measured_by}; the summary "
            "computed by the commit its first lines name; rendered to this page by commit "
            f"`{_short(GIT_COMMIT)}`. "
            "Every number below was measured in that run on this machine, or projected from it with the "
            "assumptions said beside it:", "",
            f"**The machine**: {cpu or 'CPU unrecorded'}; {machine_line(prof)}", ""]
    if CARDS in files:
        head += [f"Its profile and cost cards are beside this page: `python -m llama_ckpt project --profile "
                 f"docs/results/{PROFILE} --cards docs/results/{CARDS} --workload llama3-8b` projects them; on your "
                 "own machine, `python -m llama_ckpt profile --out FILE` measures the profile to project with.", ""]
    body = STYLE.sub("", body).replace(where, f"OUT/runs/{run_id}")  # pandas' styles: GitHub drops them
    text = "\n".join(head) + "\n" + body
    files.update(charts)
    size = len(text.encode()) + sum(len(b) for b in files.values())
    if size > MAX_BYTES:
        raise UserError(f"run {run_id}'s summary renders to {size / 2**20:.1f} MiB, over the "
                        f"{MAX_BYTES / 2**20:.0f} MiB docs/results may hold")
    dest = Path(dest)
    _clear(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    (dest / PAGE).write_text(text)
    return dest / PAGE


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m llama_ckpt.report.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="saved_models", metavar="DIR", help="where the runs are (default: %(default)s)")
    p.add_argument("--run-id", default="", help="the run to render (default: the latest complete one)")
    p.add_argument("--dest", default="docs/results", metavar="DIR", help="where to write it (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        page = publish(args.out, args.dest, args.run_id)
    except UserError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a directory it may not write
        print(f"{p.prog}: error: {exc.strerror or exc} ({exc.filename or args.dest})", file=sys.stderr)
        return 2
    print(f"wrote {page} and its charts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
