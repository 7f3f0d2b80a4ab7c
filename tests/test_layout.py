"""The package's shape: layers without import cycles, no in-function imports
of its own modules, storage asked and never type-checked, and one registry
that every part of the suite picks a new format up from."""

import ast
import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import llama_ckpt
from llama_ckpt import cli, registry
from llama_ckpt.bench import faults, measure
from llama_ckpt.checkpoint import MANIFEST
from llama_ckpt.formats.base import Format, OneFile
from llama_ckpt.model import get_model
from llama_ckpt.verify import verify

PKG = Path(llama_ckpt.__file__).parent
README = PKG.parent / "README.md"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _own_imports(mod: str, path: Path):
    """(node, imported module) for every import of a llama_ckpt module in ``mod``."""
    tree = ast.parse(path.read_text())
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    mods = _modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("llama_ckpt"):
                continue
            for alias in node.names:  # "from . import fsutil" imports the module llama_ckpt.fsutil
                sub = f"{target}.{alias.name}"
                yield node, sub if sub in mods else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("llama_ckpt"):
                    yield node, alias.name


def test_no_import_cycle_among_the_packages_modules():
    mods = _modules()
    graph = {m: sorted({t for _, t in _own_imports(m, p) if t in mods and t != m}) for m, p in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


FLOORS = llama_ckpt.FLOORS


def _unit(mod: str) -> str:
    """The top-level module or folder of the package that ``mod`` belongs to."""
    return mod.split(".")[1] if "." in mod else mod


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """The arrows of ``graph`` (module -> the package's modules it imports) between floors that do not run down."""
    floor = {u: i for i, units in enumerate(FLOORS, 1) for u in units}  # numbered from 1, as docs/layout.md
    unplaced = sorted({_unit(m) for m in graph} - set(floor))
    assert not unplaced, f"modules on no floor (add them to FLOORS): {unplaced}"
    return sorted(f"{m} -> {t} (floor {floor[_unit(m)]} -> {floor[_unit(t)]})" for m, ts in graph.items()
                  for t in ts if _unit(t) != _unit(m) and floor[_unit(t)] >= floor[_unit(m)])


def test_every_arrow_between_folders_runs_downward():
    mods = {m: p for m, p in _modules().items() if m != "llama_ckpt"}
    graph = {m: {t for _n, t in _own_imports(m, p) if t in mods} for m, p in mods.items()}
    assert not _upward(graph), _upward(graph)


def test_the_floor_rule_catches_an_arrow_upward_or_sideways():
    assert _upward({"llama_ckpt.formats.x": {"llama_ckpt.report.tables", "llama_ckpt.store.base"}}) == [
        "llama_ckpt.formats.x -> llama_ckpt.report.tables (floor 5 -> 10)"]
    assert _upward({"llama_ckpt.report.summary": {"llama_ckpt.suite.kinds"}}) == [
        "llama_ckpt.report.summary -> llama_ckpt.suite.kinds (floor 10 -> 10)"]
    assert not _upward({"llama_ckpt.suite.kinds": {"llama_ckpt.study.runs", "llama_ckpt.suite.runner"}})


def test_no_in_function_import_of_the_packages_own_modules():
    found = []
    for mod, path in _modules().items():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level
                                                             or (node.module or "").startswith("llama_ckpt")):
                        found.append(f"{mod}:{node.lineno}")
    assert not found, found


def test_only_the_store_knows_which_kind_of_storage_it_has():
    found = []
    for mod, path in _modules().items():
        if mod.startswith("llama_ckpt.store"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} | \
                        {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                if names & {"S3Prefix", "LocalDir", "Target", "Path", "PosixPath"}:
                    found.append(f"{mod}:{node.lineno}")
    assert not found, found


# -- a new format is one module and one registry line -------------------------------------------
class NumpyZip(OneFile):
    """A format defined here, as a new module would: ``numpy.savez``."""

    MECHANISM = "NumpyZip"
    FILE = "model.npz"

    @dataclass(frozen=True)
    class Knobs:
        dtype: str = "float32"

    def write(self, state_dict, loc, steps, progress):
        import numpy as np

        out = self.cast_consuming(state_dict)
        buf = io.BytesIO()
        with steps("serialise"):
            np.savez(buf, **{k: v.numpy() for k, v in out.items()})
        with loc.open_write(self.FILE) as f:
            with steps("write + fsync"):
                f.write(buf.getvalue())
                f.finish()
        progress(len(out))

    def read(self, loc, manifest, progress):
        import numpy as np

        with np.load(io.BytesIO(loc.read_bytes(self.FILE))) as z:
            out = {k: torch.from_numpy(z[k].copy()) for k in z.files}
        progress(len(out))
        return out


def test_a_new_format_is_picked_up_by_list_run_verify_and_the_fault_probe(tmp_path, monkeypatch):
    new = NumpyZip("npz", "numpy.savez of the float32 state dict", NumpyZip.Knobs())
    monkeypatch.setitem(registry.APPROACHES, "npz", new)  # the one registry line
    monkeypatch.setitem(registry.FORMATS, NumpyZip.MECHANISM, NumpyZip)

    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        cli.cmd_list(None)
    assert any(line.startswith("npz ") for line in shown.getvalue().splitlines())
    assert "npz" in [a.name for a in registry.resolve("all")]
    assert "npz" in registry.formats_phase()  # 05-formats compares it

    _, rows = measure.run(registry.resolve("pytorch,npz"), get_model("tiny"),
                          measure.Options(out=tmp_path / "o", repeats=1, keep=True, disk_reference=False))
    assert sorted(r["approach"] for r in rows) == ["npz", "pytorch"] and all(r["verified"] for r in rows)
    (npz,) = [r for r in rows if r["approach"] == "npz"]
    assert npz["save_phases"]["write + fsync"] > 0
    assert verify(npz["path"]).ok
    man = json.loads((Path(npz["path"]) / MANIFEST).read_text())
    assert man["mechanism"] == "NumpyZip" and type(registry.approach_of(dict(man, approach="npz[x]"))) is NumpyZip
    out = faults.probe(new, "flipped byte", tmp_path, get_model("tiny").materialize())
    assert out.result in (faults.FORMAT_RAISES, faults.ONLY_DIGESTS), out


def test_a_format_class_names_its_mechanism_and_a_dtype_knob_or_is_refused_when_defined():
    with pytest.raises(TypeError, match="NoName: a Format subclass sets MECHANISM"):
        class NoName(NumpyZip):  # inheriting NumpyZip's would make its checkpoints read back as NumpyZip
            pass
    with pytest.raises(TypeError, match="NoDtype: its Knobs must be a dataclass with a dtype field"):
        class NoDtype(Format):
            MECHANISM = "NoDtype"

            @dataclass(frozen=True)
            class Knobs:
                level: int = 1

    class Base(Format, abstract=True):  # a base meant only to be subclassed needs neither
        pass


def test_05_formats_compares_the_formats_outside_the_guide_with_two_guide_baselines():
    got = registry.formats_phase()
    assert {"safetensors", "dcp", "ts+best", "tensorizer"} <= set(got)
    assert not set(got) & set(registry.names(tag=registry.GUIDE) + registry.names(sharded=True))
    assert "ts+bfloat16" not in got  # a variant (4d's sweep point), not a format
    assert set(registry.FORMAT_BASELINES) <= set(registry.names(tag=registry.GUIDE))
