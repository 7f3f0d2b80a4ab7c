"""The suite's own aims: what its best configurations are set against, and the thresholds they are judged by.

Beside the guide's claims (:mod:`llama_ckpt.study.claims`), the suite asks two
questions of its own. 05-formats: can a TensorStore configuration beat what
teams save with today? ``ts+best`` against the float32 formats, ``ts+best16``
against torch.save's float16 (like with like). 07-training: does the best
asynchronous saver give the loop back soon enough, and slow its steps little
enough? The phases, the findings, the summary and the notebooks read them
from here.
"""

from __future__ import annotations

# 05: (a, b) pairs, each a / b as a ratio of medians (below 1: a is faster or smaller)
FORMAT_AIMS: tuple[tuple[str, str], ...] = (("ts+best", "pytorch-fp32"), ("ts+best", "safetensors"),
                                            ("ts+best16", "pytorch"))
# every approach the format aims compare, each once, in the pairs' order
AIM_APPROACHES: tuple[str, ...] = tuple(dict.fromkeys(n for pair in FORMAT_AIMS for n in pair))

# 09's no-disk state (issue 36): the recommended TensorStore configuration's medians at most this many times the
# fastest approach's, save and load
NO_DISK_BEST, NO_DISK_AIM = "ts+best", 1.2

# 07: the best asynchronous saver blocks for at most this share of its synchronous save
BLOCKING_AIM = 0.05
# ... and the steps run at most this much slower while it finishes: in the accelerator-bound loop (issue 29's
# aim), and in the CPU-bound loop (the aim it was first measured against)
SLOWDOWN_AIMS = {"accelerator": 0.05, "cpu": 0.10}
SLOWDOWN_AIM = SLOWDOWN_AIMS["cpu"]  # a loop of no known kind
AIM_CHECKPOINTS = 5  # the training aims are judged on medians of at least this many checkpoints per saver
