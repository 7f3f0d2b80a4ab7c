"""One module per storage mechanism, each with its single-process and its
per-rank save and load (see :class:`~llama_ckpt.formats.base.Format`)."""
