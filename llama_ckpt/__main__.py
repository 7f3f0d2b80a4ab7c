"""``python -m llama_ckpt``: the command line (:mod:`llama_ckpt.cli`); ``project`` to an MLPerf Storage
workload runs from :mod:`llama_ckpt.projecting` alone, without importing torch, so that it answers at once."""

import sys

from . import projecting

if projecting.handles(sys.argv[1:]):
    sys.exit(projecting.main(sys.argv[1:]))

from .cli import main  # noqa: E402 - torch and every format: only for the commands that need them

sys.exit(main())
