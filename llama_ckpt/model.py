"""The models: LLaMA-shaped presets with seeded random weights, or real
weights from a local Hugging Face folder. Nothing is downloaded.

A :class:`ModelSource` knows its tensors' names, shapes and dtypes without
materialising them (for disk estimates and fairness checks) and builds a fresh
state dict on demand: the measurement frees the source before each load (the
float32 OpenLLaMA-3B source and a loaded copy do not fit in 24 GB together)
and asks for a new one before the next save; a :class:`KeptSource` holds a
small one and hands out copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

# Widths of each preset; everything else is OpenLLaMA-3B's (untied embeddings,
# 32k vocabulary, SiLU MLP, RMSNorm).
PRESETS: dict[str, dict] = {
    # A few layers, ~1 MB in float32: for tests.
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=1000),
    # OpenLLaMA-3B's structure (26 layers, 237 state-dict entries, same names)
    # at a fifth of its width: 170 M parameters, 0.68 GB in float32.
    "small": dict(hidden_size=640, intermediate_size=1728, num_hidden_layers=26,
                  num_attention_heads=10, vocab_size=32000),
    # The exact OpenLLaMA-3B config: 3,426,473,600 parameters, 13.7 GB float32.
    "open_llama_3b": dict(hidden_size=3200, intermediate_size=8640, num_hidden_layers=26,
                          num_attention_heads=32, vocab_size=32000),
}
DEFAULT_PRESET = "small"
INIT_STD = 0.02  # LLaMA's initializer_range
# The dtype a preset's weights are drawn in before the upcast to float32: the
# dtype the real model is published in (OpenLLaMA-3B: float16, 6.85 GB), so a
# float32 copy has the zero low mantissa bits of real float32 copies of it
# (which is what compression and a float16 cast meet). ``PRESET:float32``
# draws full 23-bit mantissas instead.
PUBLISHED_DTYPE = "float16"
ORIGINS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_model(name: str) -> tuple[str, str]:
    """``"small"`` -> ("small", "float16"); ``"small:float32"`` -> ("small", "float32")."""
    preset, _, origin = name.partition(":")
    origin = origin or PUBLISHED_DTYPE
    if preset not in PRESETS:
        raise UserError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if origin not in ORIGINS:
        raise UserError(f"unknown weights {origin!r} in model {name!r}: a preset's weights are drawn in "
                        f"{', '.join(ORIGINS)} (\"{preset}:float32\" for full float32 mantissas)")
    return preset, origin


def model_name(preset: str, origin: str) -> str:
    """The name rows carry: the preset alone for its published dtype's weights."""
    return preset if origin == PUBLISHED_DTYPE else f"{preset}:{origin}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def tensor_kind(name: str) -> str:
    """Which part of a LLaMA a state-dict entry belongs to."""
    if "embed_tokens" in name:
        return "embedding"
    if "lm_head" in name:
        return "lm_head"
    if "norm" in name:
        return "norm"
    if "self_attn" in name:
        return "attention"
    if "mlp" in name:
        return "mlp"
    return "other"


def llama_config(preset: str):
    from transformers import LlamaConfig

    preset, _ = parse_model(preset)
    w = PRESETS[preset]
    return LlamaConfig(**w, num_key_value_heads=w["num_attention_heads"], tie_word_embeddings=False,
                       max_position_embeddings=2048, rms_norm_eps=1e-6)


def _specs_on_meta(config) -> list[TensorSpec]:
    """State-dict entries (parameters and persistent buffers) of the model the
    config describes, built on the meta device: no memory, no init."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


class ModelSource:
    """A model whose state dict can be built again and again, bitwise the same."""

    name: str
    specs: list[TensorSpec]
    origin: str | None = None  # a preset's weights are drawn in this dtype; None: real weights

    @property
    def weights(self) -> str:
        """What the weights are, for rows and tables (``float16-origin``, ``float32``, ``as loaded``)."""
        return weights_label(self.origin)

    def materialize(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return sum(s.numel for s in self.specs)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    def tensor_set_digest(self) -> str:
        """Identifies the tensor set (names and shapes): rows with different
        digests measured different things and are never compared."""
        return tensor_set_digest(self.specs)


def tensor_set_digest(specs: list[TensorSpec]) -> str:
    h = hashlib.sha256()
    for s in sorted(specs, key=lambda s: s.name):
        h.update(f"{s.name}:{list(s.shape)}\n".encode())
    return h.hexdigest()[:16]


class PresetModel(ModelSource):
    """Seeded random weights in a LLaMA-like distribution: every tensor
    normal(0, 0.02), each block of ``DRAW_ROWS`` rows from its own generator
    (seeded by the run seed, the tensor's name and the block, so one tensor
    never depends on another, and a rank draws only its own rows), norm weights 1,
    rounded to the dtype the real model is published in (``origin``, float16
    by default; ``"small:float32"`` keeps full float32 mantissas) and held in
    float32. Filling tensors directly is far quicker than transformers'
    per-module init (docs/decisions.md#seeded-weights)."""

    def __init__(self, preset: str = DEFAULT_PRESET, seed: int = 0):
        base, self.origin = parse_model(preset)
        self.config = llama_config(base)
        self.preset = base
        self.name = model_name(base, self.origin)
        self.seed = seed
        self.specs = [TensorSpec(s.name, s.shape, torch.float32) for s in _specs_on_meta(self.config)]

    def materialize(self) -> dict[str, torch.Tensor]:
        return {s.name: self.tensor(s) for s in self.specs}

    def tensor(self, s: TensorSpec) -> torch.Tensor:
        """One tensor, bitwise the same every time (a rank builds only what it needs)."""
        return seeded_tensor(s, self.seed, self.origin)


def weights_label(origin: str | None) -> str:
    """``float16-origin`` (float16 values held in float32), ``float32`` (full mantissas), ``as loaded``."""
    if origin is None:
        return "as loaded"
    return "float32" if origin == "float32" else f"{origin}-origin"


# Rows drawn from one generator: a tensor's rows come in blocks of this many, each block from its own generator
# (seeded by the run seed, the tensor's name and the block's index), so rows a..b cost about b - a rows to draw.
DRAW_ROWS = 64
# What the manifest of a sharded checkpoint records of the draw: a checkpoint whose source was drawn another
# way cannot be checked against it
DRAW = f"blocks-of-{DRAW_ROWS}-rows"


def seeded_tensor(s: TensorSpec, seed: int, origin: str = PUBLISHED_DTYPE,
                  rows: tuple[int, int] | None = None) -> torch.Tensor:
    """A preset's tensor from its spec, the run seed and the weights' origin
    dtype alone (no model config needed: the sharded ranks call this without
    importing transformers); ``rows`` (a, b): only rows a..b of it, bitwise the
    rows of the whole tensor, for about their share of the work."""
    n = s.shape[0]
    a, b = rows or (0, n)
    t = torch.empty((b - a, *s.shape[1:]), dtype=s.dtype)
    if tensor_kind(s.name) == "norm":
        t.fill_(1.0)
        return t
    for block in range(a // DRAW_ROWS, -(-b // DRAW_ROWS)):
        lo, hi = block * DRAW_ROWS, min(n, (block + 1) * DRAW_ROWS)
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{s.name}#{block}".encode()))
        if a <= lo and hi <= b:  # drawn in place
            t[lo - a:hi - a].normal_(0.0, INIT_STD, generator=g)
        else:  # a block cut by the rows asked for: drawn whole, the rows asked for kept
            whole = torch.empty((hi - lo, *s.shape[1:]), dtype=s.dtype).normal_(0.0, INIT_STD, generator=g)
            t[max(lo, a) - a:min(hi, b) - a] = whole[max(lo, a) - lo:min(hi, b) - lo]
    if ORIGINS[origin] != t.dtype:  # round to the published dtype, held in the spec's dtype
        t.copy_(t.to(ORIGINS[origin]))
    return t


class LocalModel(ModelSource):
    """Real weights from a local Hugging Face model folder (config.json plus
    safetensors or .bin weights), loaded with local files only, in whatever
    dtype they are stored. The state dict is whatever the model has."""

    def __init__(self, path: str | Path):
        from transformers import AutoConfig

        p = Path(path)
        if not p.exists():
            raise UserError(f"--model-path {path}: no such directory")
        if not p.is_dir():
            raise UserError(f"--model-path {path}: not a directory")
        if not (p / "config.json").is_file():
            raise UserError(f"--model-path {path}: not a model folder (no config.json)")
        weights = list(p.glob("*.safetensors")) + list(p.glob("*.bin"))
        if not weights:
            raise UserError(f"--model-path {path}: not a model folder (no *.safetensors or *.bin weights)")
        try:
            self.config = AutoConfig.from_pretrained(p, local_files_only=True)
        except (ValueError, OSError, json.JSONDecodeError, KeyError) as exc:
            raise UserError(f"--model-path {path}: config.json cannot be read: {str(exc).splitlines()[0]}") from None
        self.path = p.resolve()
        self.name = f"local:{self.path.name}"
        dtype = getattr(self.config, "dtype", None) or getattr(self.config, "torch_dtype", None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.specs = [TensorSpec(s.name, s.shape, dtype if s.dtype.is_floating_point else s.dtype)
                      for s in _specs_on_meta(self.config)]

    def materialize(self) -> dict[str, torch.Tensor]:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype="auto")
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"--model-path {self.path}: weights cannot be loaded: {str(exc).splitlines()[0]}") from None
        sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        del model
        # The real dtypes win over what config.json announced.
        self.specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in sd.items()]
        return sd


# A source at most this share of the machine's memory is built once per run and copied for each save
KEEP_SHARE = 1 / 16
KEEP_DIR = Path("/dev/shm")  # where a kept source lies: memory, but not this process's resident memory


class KeptSource(ModelSource):
    """``source`` built once and kept in a file on a memory file system
    (``KEEP_DIR``): each ``materialize`` reads it into fresh memory, as a
    rebuilt state dict would be, for a memory copy's time instead of drawing
    every weight again (or reading a model folder again). The kept bytes are
    not in this process's resident memory, so every peak measured beside
    them is what it was without. Tensors that shared storage in the source
    share it in every copy. Only where the source is a small share of memory
    (``keeps``): the float32 OpenLLaMA-3B is rebuilt before each save.
    ``close()`` removes the file."""

    def __init__(self, source: ModelSource):
        sd = source.materialize()
        self.name, self.specs, self.origin = source.name, source.specs, source.origin
        self.path = KEEP_DIR / f"llama-ckpt-source-{os.getpid()}-{uuid.uuid4().hex[:8]}.bin"
        self._layout: list[tuple[str, int, tuple[int, ...], torch.dtype, int]] = []  # name, offset, shape, dtype, alias
        seen: dict[tuple, int] = {}
        off = 0
        try:
            with open(self.path, "wb") as f:
                for i, (k, v) in enumerate(sd.items()):
                    key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()),
                           v.dtype)
                    if v.numel() and key in seen:
                        self._layout.append((k, -1, tuple(v.shape), v.dtype, seen[key]))
                        continue
                    seen[key] = i
                    data = v.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
                    f.write(memoryview(data))
                    self._layout.append((k, off, tuple(v.shape), v.dtype, -1))
                    off += data.nbytes
        except BaseException:
            self.close()
            raise
        del sd

    @staticmethod
    def keeps(source: ModelSource, memory_bytes: int) -> bool:
        """Whether ``source`` is a small share of ``memory_bytes`` and ``KEEP_DIR`` can take it, with room to spare."""
        if source.nbytes > memory_bytes * KEEP_SHARE or not KEEP_DIR.is_dir() or not os.access(KEEP_DIR, os.W_OK):
            return False
        return shutil.disk_usage(KEEP_DIR).free > 2 * source.nbytes

    def materialize(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        made: list[torch.Tensor] = []
        with open(self.path, "rb", buffering=0) as f:
            for name, off, shape, dtype, alias in self._layout:
                if alias >= 0:
                    t = made[alias]
                else:
                    t = torch.empty(shape, dtype=dtype)
                    buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                    f.seek(off)
                    while len(buf):  # one read returns at most about 2 GiB
                        n = f.readinto(buf)
                        if not n:
                            raise EOFError(f"{self.path}: the kept source is shorter than its layout")
                        buf = buf[n:]
                made.append(t)
                out[name] = t
        return out

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def get_model(preset: str | None = None, model_path: str | None = None, seed: int = 0) -> ModelSource:
    if model_path:
        return LocalModel(model_path)
    return PresetModel(preset or DEFAULT_PRESET, seed=seed)
