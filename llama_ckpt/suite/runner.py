"""``make run-all``: every phase notebook executed by papermill into
``OUT/runs/RUN_ID/``, then the summary, then the 8-way table on the console.

A phase whose results are complete and whose executed notebook ran clean is
skipped when the same RUN_ID runs again. A failing phase stops the suite,
naming the phase and the cell; its executed notebook shows the failing cell,
and finished phases' results stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .. import fsutil
from ..bench import hostmem, scaffold
from ..errors import UserError
from ..model import get_model
from ..study.phases import PHASES, SUMMARY_SLUG, get_phase
from ..study.runs import DEFAULT_OUT, REPO, latest_run, notebook_ran_clean, phase_complete, run_dir
from .kinds import kind_of

NOTEBOOKS = REPO / "notebooks"


class PhaseFailed(Exception):
    """A notebook raised: the message names the phase, the cell and the file."""


def _ipc_kernel_manager(prefix: Path):
    """A kernel manager whose kernel talks over unix sockets named ``prefix-N``
    instead of TCP on loopback (unencrypted: ipykernel warns on every start)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(transport="ipc", ip=str(prefix), **kw)

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts (SIGINT) every kernel it shuts down, even an
            # idle one: a kernel still in a message handler then logs "KeyboardInterrupt
            # caught in kernel" on this console. A finished notebook needs no interrupt.
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return IPCKernelManager


def _same_package_in_kernels() -> None:
    """The notebooks' kernels (and the processes they start) import this very package, not whichever an
    environment's install points at (an editable install of another checkout), so the commit each phase records
    is the runner's."""
    root = Path(__file__).resolve().parent.parent.parent
    if not (root / "pyproject.toml").is_file():  # an installed package (site-packages): the kernels find it
        return
    here = str(root)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths[:1] != [here]:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *[p for p in paths if p != here]])


def execute(slug: str, out_nb: Path, parameters: dict, stream: bool = True) -> None:
    """Execute one notebook; with ``stream`` its printed progress (a line per
    measured row) goes to this console as it runs."""
    import papermill as pm

    src = NOTEBOOKS / f"{slug}.ipynb"
    if not src.is_file():
        raise UserError(f"notebook {src} not found")
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    _same_package_in_kernels()
    try:
        with tempfile.TemporaryDirectory(prefix="llama-ckpt-kernel-") as sockets:
            pm.execute_notebook(str(src), str(out_nb), parameters=parameters, cwd=str(NOTEBOOKS),
                                kernel_name="python3", progress_bar=False, log_output=False,
                                stdout_file=sys.stdout if stream else None, stderr_file=sys.stderr if stream else None,
                                kernel_manager_class=_ipc_kernel_manager(Path(sockets) / "kernel"))
    except pm.PapermillExecutionError as exc:
        first = str(exc.evalue).splitlines()[0] if exc.evalue else ""
        raise PhaseFailed(f"phase {slug} failed in cell {exc.exec_count}: {exc.ename}: {first}; "
                          f"executed notebook: {out_nb}") from None


# every phase's parameters
COMMON = ("MODEL", "MODEL_PATH", "REPEATS", "OUT_DIR", "RUN_ID", "KEEP_CHECKPOINTS", "PREPARE")


def notebook_parameters(slug: str) -> list[str]:
    """The names the ``parameters`` cell of a notebook defines (``NAME: type = value  # what``)."""
    path = NOTEBOOKS / f"{slug}.ipynb"
    cells = json.loads(path.read_text())["cells"] if path.is_file() else []
    src = next(("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), "")
    return [ln.split(":", 1)[0].strip() for ln in src.splitlines() if ":" in ln.split("=", 1)[0]]


def parse_sets(items: list[str]) -> dict[str, dict]:
    """``PHASE.NAME=VALUE`` -> ``{slug: {NAME: value}}``: a phase notebook's own parameter, its value JSON where
    it parses (a number, a list, true or false), else text. A phase or a parameter its notebook does not have is
    refused, and so are the parameters every phase takes (set them with their own options)."""
    out: dict[str, dict] = {}
    for item in items:
        where, sep, value = item.partition("=")
        phase_id, dot, name = where.partition(".")
        if not (sep and dot and name):
            raise UserError(f"--set {item!r}: expected PHASE.NAME=VALUE, e.g. 08.CLAIMS_BUDGET_S=120")
        phase = get_phase(phase_id)
        own = [n for n in notebook_parameters(phase.slug) if n not in COMMON]
        if name not in own:
            raise UserError(f"--set {item!r}: {phase.slug} has no parameter {name!r} of its own; its own: "
                            f"{', '.join(own) or 'none'}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(phase.slug, {})[name] = parsed
    return out


def run_suite(phase_ids: list[str], model: str = "small", model_path: str = "", repeats: int = 3,
              out_dir: str | Path = DEFAULT_OUT, run_id: str = "", keep: bool = False,
              summary: bool = True, sets: dict[str, dict] | None = None,
              prepare=scaffold.DEFAULT_PREPARE) -> str:
    """Run the phases, then the summary; returns the run id. ``sets`` (:func:`parse_sets`) overrides a phase
    notebook's own parameters; ``prepare``: what the phases' runs may do to the machine (scaffold.PREPARE)."""
    prepare = scaffold.parse_prepare(prepare)
    out_dir = Path(out_dir).resolve()
    phases = [get_phase(p) for p in phase_ids]
    if repeats < 1:
        raise UserError(f"REPEATS must be at least 1, got {repeats}")
    if not phases and not run_id:  # summary only: the latest run
        run_id = latest_run(out_dir)
        if not run_id:
            raise UserError(f"no run in {out_dir / 'runs'}: run the phases first (make run-all)")
    run_id = run_id or scaffold.new_run_id()
    rdir = run_dir(out_dir, run_id)
    if phases:
        fsutil.check_writable(rdir)
        source = get_model(model or None, model_path or None)
        kinds = [kind_of(p.id, run_id=run_id) for p in phases]
        # with keep, every approach's last checkpoint stays, of the kinds that keep them
        approaches = list({a.name: a for k in kinds if k.keeps or not keep for a in k.approaches()}.values())
        scaffold.check_disk(approaches, source, rdir, keep, True)
    # the notebooks' kernels, our children, share the lock and the memory kept from the host
    with fsutil.machine_lock(out_dir):
        hostmem.restore_left(print)
        holding = (hostmem.held(print)
                   if phases and "hold-memory" in prepare else contextlib.nullcontext())
        with holding as held:
            if held and "touched_bytes" in held and "held_by" not in held:
                print(f"memory: this suite keeps the machine's free memory from its host while it runs "
                      f"(page_reporting_order {held['reporting_order_found']} -> {held['reporting_order_set']}, "
                      f"put back at its end; the {held['touched_bytes'] / 1e9:.1f} GB available touched once, in "
                      f"{held['touch_s']:.0f} s; PREPARE without hold-memory turns it off)", flush=True)
            params = dict(MODEL=model, MODEL_PATH=model_path or "", REPEATS=repeats, OUT_DIR=str(out_dir),
                          RUN_ID=run_id, KEEP_CHECKPOINTS=keep, PREPARE=",".join(prepare) or "none")
            _run_phases(phases, params, summary, rdir, sets or {})
    return run_id


def _run_phases(phases, params: dict, summary: bool, rdir: Path, sets: dict) -> None:
    out_dir, run_id, model = Path(params["OUT_DIR"]), params["RUN_ID"], params["MODEL_PATH"] or params["MODEL"]
    t_all = time.perf_counter()
    for i, p in enumerate(phases, 1):
        out_nb = rdir / f"{p.slug}.ipynb"
        if phase_complete(out_dir, run_id, p.slug) and notebook_ran_clean(out_nb):
            print(f"[{i}/{len(phases)}] {p.slug}: complete in run {run_id}, skipped", flush=True)
            continue
        kind = kind_of(p.id, repeats=params["REPEATS"], run_id=run_id)
        # the phase's own parameters set with --set, where the notebook passes them on by their lower-case name
        own = {k.lower(): v for k, v in sets.get(p.slug, {}).items() if k.lower() in kind.own}
        size = kind_of(p.id, repeats=params["REPEATS"], run_id=run_id, **own).size() if own else kind.size()
        print(f"[{i}/{len(phases)}] {p.slug}: {p.title}: {size} on {model}", flush=True)
        t0 = time.perf_counter()
        execute(p.slug, out_nb, {**params, **sets.get(p.slug, {})})
        print(f"[{i}/{len(phases)}] {p.slug}: done in {time.perf_counter() - t0:.0f} s -> {out_nb}", flush=True)
    if summary:
        out_nb = rdir / f"{SUMMARY_SLUG}.ipynb"
        print(f"summary: {out_nb}", flush=True)
        execute(SUMMARY_SLUG, out_nb, dict(OUT_DIR=str(out_dir), RUN_ID=run_id), stream=False)
    print(f"run {run_id}: {time.perf_counter() - t_all:.0f} s; notebooks: {rdir}", flush=True)


def sync_headers(notebooks: Path = NOTEBOOKS) -> list[str]:
    """Rewrite each phase notebook's header cell from its catalogue entry;
    returns the notebooks that changed."""
    import nbformat

    changed = []
    for p in PHASES.values():
        path = notebooks / f"{p.slug}.ipynb"
        nb = nbformat.read(path, as_version=4)
        if nb.cells[0].source != p.header():
            nb.cells[0].source = p.header()
            nbformat.write(nb, path)
            changed.append(p.slug)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["headers"]:
        sys.exit("usage: python -m llama_ckpt.suite.runner headers")
    print("rewrote:", ", ".join(sync_headers()) or "nothing (in step)")
