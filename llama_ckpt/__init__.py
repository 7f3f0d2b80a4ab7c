"""llama_ckpt: how should LLaMA-shaped weights be stored so checkpoints save and
load fast, stay small, and come back exactly?

Two contracts carry the package: where a checkpoint lives
(:class:`llama_ckpt.store.Location`: a local directory or an S3 prefix) and
how it is written (:class:`llama_ckpt.formats.base.Format`: single-process and
per-rank save and load). :mod:`llama_ckpt.registry` names every approach;
:mod:`llama_ckpt.bench.measure` measures them; :mod:`llama_ckpt.study` holds
the phases, the claims and their rule; :mod:`llama_ckpt.suite` runs the
phases and :mod:`llama_ckpt.report` turns the rows into notebooks; :mod:`llama_ckpt.cli` is
``python -m llama_ckpt``. ``docs/layout.md`` has one line per module
(generated from their docstrings).
"""

__version__ = "0.1.0"

# The floors of the package, bottom first, each a top-level module or folder: one imports only from floors below
# its own (a folder's modules may import each other); suite/ and report/ share a floor and never import each
# other, both reading the catalogues, the verdicts and the run layout from study/ below them.
# tests/test_layout.py holds the package to it; the docs' layout is generated from it.
FLOORS = (
    ("errors", "units"),
    ("fsutil", "model", "recorders", "netdelay"),
    ("digests", "store", "results"),
    ("checkpoint",),
    ("formats",),
    ("registry",),
    ("verify",),
    ("bench",),
    ("study",),
    ("suite", "report"),
    ("projecting",),
    ("cli", "docgen"),
    ("__main__",),
)
