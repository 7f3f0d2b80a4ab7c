"""The package's shape: layers without import cycles, no in-function imports
of its own modules, storage asked and never type-checked, and one registry
that every part of the suite picks a new format up from."""

import ast
import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import llama_ckpt
from llama_ckpt import cli, registry
from llama_ckpt.bench import faults, measure
from llama_ckpt.formats.base import OneFile
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


def test_no_in_function_import_of_the_packages_own_modules():
    found = []
    for mod, path in _modules().items():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("llama_ckpt")):
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


def test_every_approach_has_a_readme_row():
    text = README.read_text()
    missing = [n for n in registry.APPROACHES if f"| `{n}` |" not in text]
    assert not missing, missing


# -- a new format is one module and one registry line -------------------------------------------
class NumpyZip(OneFile):
    """A format defined here, as a new module would: ``numpy.savez``."""

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
    monkeypatch.setitem(registry.FORMATS, "NumpyZip", NumpyZip)

    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        cli.cmd_list(None)
    assert any(line.startswith("npz ") for line in shown.getvalue().splitlines())
    assert "npz" in [a.name for a in registry.resolve("all")]

    _, rows = measure.run(registry.resolve("pytorch,npz"), get_model("tiny"),
                          measure.Options(out=tmp_path / "o", repeats=1, keep=True, disk_reference=False))
    assert [r["approach"] for r in rows] == ["pytorch", "npz"] and all(r["verified"] for r in rows)
    assert rows[1]["save_phases"]["write + fsync"] > 0
    assert verify(rows[1]["path"]).ok
    out = faults.probe(new, "flipped byte", tmp_path, get_model("tiny").materialize())
    assert out.result in (faults.FORMAT_RAISES, faults.ONLY_DIGESTS), out
