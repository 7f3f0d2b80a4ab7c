"""llama_ckpt: how should LLaMA-shaped weights be stored so checkpoints save and
load fast, stay small, and come back exactly?

The package holds every line of logic of the suite: the approaches
(:mod:`llama_ckpt.approaches`), the models (:mod:`llama_ckpt.model`), the timing
protocol (:mod:`llama_ckpt.measure`), round-trip checks (:mod:`llama_ckpt.verify`),
the result rows (:mod:`llama_ckpt.results`) and the CLI (:mod:`llama_ckpt.cli`).
"""

__version__ = "0.1.0"
