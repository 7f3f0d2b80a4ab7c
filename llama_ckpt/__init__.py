"""llama_ckpt: how should LLaMA-shaped weights be stored so checkpoints save and
load fast, stay small, and come back exactly?

Two contracts carry the package: where a checkpoint lives
(:class:`llama_ckpt.store.Location`: a local directory or an S3 prefix) and
how it is written (:class:`llama_ckpt.formats.base.Format`: single-process and
per-rank save and load). :mod:`llama_ckpt.registry` names every approach;
:mod:`llama_ckpt.bench.measure` measures them; :mod:`llama_ckpt.report` and
:mod:`llama_ckpt.suite` turn the rows into notebooks; :mod:`llama_ckpt.cli` is
``python -m llama_ckpt``. The README's layout section has one line per module.
"""

__version__ = "0.1.0"
