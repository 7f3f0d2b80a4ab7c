"""A training process for the kill test: checkpoint 1 saved and durable (its
digests written beside it), then checkpoint 2 started and paused at a hook
in its background work ("PAUSED" printed) while the loop goes on stepping,
until the test kills this process.

    python -m tests.training_child SAVER DIR HOOK   (HOOK: started or written)
"""

import json
import sys
import time
from pathlib import Path

from llama_ckpt.bench.training import Trainer
from llama_ckpt.digests import tensor_digest
from llama_ckpt.bench.savers import SAVERS, Hooks
from llama_ckpt.model import get_model
from llama_ckpt.store import LocalDir


def pause() -> None:
    print("PAUSED", flush=True)
    time.sleep(600)


def main(saver_name: str, out: str, hook: str) -> None:
    saver, root = SAVERS[saver_name], LocalDir(out)
    trainer = Trainer(get_model("tiny"))
    saver.prepare(root / "warm-up")
    (root / "warm-up").remove()
    trainer.step()
    sd = trainer.state_dict()
    digests = {k: tensor_digest(v) for k, v in sd.items()}
    saver.start(sd, root / "ckpt-1", digests).wait()
    Path(out, "digests-1.json").write_text(json.dumps(digests))
    trainer.step()
    sd = trainer.state_dict()
    saver.start(sd, root / "ckpt-2", {k: tensor_digest(v) for k, v in sd.items()}, Hooks(**{hook: pause}))
    while True:  # the loop goes on while the checkpoint is in flight
        trainer.step()


if __name__ == "__main__":
    main(*sys.argv[1:])
