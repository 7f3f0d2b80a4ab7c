"""``python -m llama_ckpt``: the command line (:mod:`llama_ckpt.cli`)."""

import sys

from .cli import main

sys.exit(main())
