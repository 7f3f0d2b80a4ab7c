"""From this machine to the field's sizes (issue 37): each approach's cost card projected to MLPerf Storage's
checkpoint workloads by the work model (docs/decisions.md#work-model-2), its form unchanged; what the projection
adds is how one node's measured rates are shared by the ranks on it and how many bytes each rank writes
(docs/decisions.md#projection).

A workload is MLPerf Storage's (its DLIO configs, ``configs/dlio/workload/llama3_*.yaml`` of mlcommons/storage:
the model's dimensions, tensor x pipeline parallelism and ZeRO stage; the rank counts of its rules), or a model of
the suite's presets on a number of ranks of one node (the weights only, as the suite saves them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import UserError
from .profile import MachineProfile, Rate, median
from .text import render
from .work import Card, Prediction, median_of, predict

RANKS_PER_NODE = 8  # MLPerf Storage's hosts: one rank per accelerator, eight accelerators a host
MODEL_BYTES, OPTIMIZER_BYTES = 2, 12  # per parameter: fp16 weights; fp32 master weights and Adam's two moments


@dataclass(frozen=True)
class Workload:
    """A checkpoint written by ``ranks`` processes, ``ranks_per_node`` to a node."""

    name: str
    params: int
    tp: int  # tensor parallelism
    pp: int  # pipeline parallelism
    ranks: int
    zero: int  # ZeRO stage: 3 shards everything over every rank; 1 shards the optimizer's state only
    optimizer: bool = True  # the checkpoint holds the optimizer's state (MLPerf's do; a preset's weights do not)
    weight_bytes: int = MODEL_BYTES  # bytes per parameter of the weights as stored
    ranks_per_node: int = RANKS_PER_NODE
    source: str = ""
    published_GiB: float | None = None  # the checkpoint's size as MLPerf Storage publishes it (its "GB" are GiB)

    @property
    def nodes(self) -> int:
        return math.ceil(self.ranks / self.ranks_per_node)

    @property
    def on_node(self) -> int:
        """The ranks that share one node."""
        return min(self.ranks, self.ranks_per_node)

    @property
    def total_bytes(self) -> int:
        return self.params * (self.weight_bytes + (OPTIMIZER_BYTES if self.optimizer else 0))

    @property
    def rank_bytes(self) -> int:
        """The bytes of the rank that writes most: under ZeRO 3 every rank writes an even share of everything;
        under ZeRO 1 every rank its share of the optimizer's state and the first data-parallel replica's ranks
        their tensor x pipeline share of the weights too (DeepSpeed's layout)."""
        weights, opt = self.params * self.weight_bytes, self.params * OPTIMIZER_BYTES if self.optimizer else 0
        if self.zero >= 3:
            return math.ceil((weights + opt) / self.ranks)
        return math.ceil(opt / self.ranks + weights / (self.tp * self.pp))


def _llama_params(layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, vocab: int) -> int:
    """Parameters of a LLaMA-shaped model of these dimensions (untied embeddings, RMS norms without bias)."""
    kv = hidden // heads * kv_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn + 2 * hidden
    return layers * per_layer + 2 * vocab * hidden + hidden


_DLIO = "mlcommons/storage configs/dlio/workload/llama3_{}.yaml; ranks: MLPerf Storage's checkpointing rules"
WORKLOADS = {
    "llama3-8b": Workload("llama3-8b", _llama_params(32, 4096, 14336, 32, 8, 128256), 1, 1, 8, 3,
                          source=_DLIO.format("8b"), published_GiB=105),
    "llama3-70b": Workload("llama3-70b", _llama_params(80, 8192, 28672, 128, 8, 128256), 8, 1, 64, 3,
                           source=_DLIO.format("70b"), published_GiB=912),
    "llama3-405b": Workload("llama3-405b", _llama_params(126, 16384, 53248, 128, 8, 128256), 8, 32, 512, 1,
                            source=_DLIO.format("405b"), published_GiB=5290),
    "llama3-1t": Workload("llama3-1t", _llama_params(128, 25872, 98304, 192, 32, 128256), 8, 64, 1024, 1,
                          source=_DLIO.format("1t"), published_GiB=18000),
}


def workload(spec: str, source_of=None) -> Workload:
    """An MLPerf workload by name, or ``PRESET:RANKS`` (a model of the suite's, weights only, on ``RANKS`` ranks
    of one node; ``source_of``: the preset's :class:`~llama_ckpt.model.ModelSource` by name)."""
    if spec in WORKLOADS:
        return WORKLOADS[spec]
    name, _, ranks = spec.rpartition(":")
    if source_of is None or not ranks.isdigit() or int(ranks) < 1:
        raise UserError(f"--workload {spec}: not one of {', '.join(WORKLOADS)} or PRESET:RANKS (RANKS >= 1)")
    return weights_on(spec, int(ranks), sum(s.numel for s in source_of(name).specs),
                      f"the suite's preset {name}, its weights as each approach stores them")


def weights_on(name: str, ranks: int, params: int = 0, source: str = "") -> Workload:
    """A model's weights alone on ``ranks`` ranks of one node, each writing an even share; their bytes are each
    approach's own (``project``'s ``payload``), not the workload's."""
    return Workload(name, params, 1, 1, ranks, 3, optimizer=False, weight_bytes=0, ranks_per_node=ranks,
                    source=source)


def shared(profile: MachineProfile, ranks: int) -> MachineProfile:
    """``profile``'s node as one of ``ranks`` ranks running at once sees it: the disk's rates, file creates and
    fsyncs split evenly; the cores split evenly (a fraction where there are more ranks than cores); the
    one-thread memory rates (page-cache copy, fresh-memory fill) slowed where the ranks together would copy
    faster than every core did (``memory_copy_all_Bps``; by the ranks' count where the profile has no memory
    copy)."""
    if ranks <= 1:
        return profile

    def part(rate: Rate | None, by: float) -> Rate | None:
        return Rate(rate.median / by, rate.spread_pct, tuple(x / by for x in rate.samples)) if rate else None

    one, every = median(profile.memory_copy_1_Bps), median(profile.memory_copy_all_Bps)
    slow = max(1.0, ranks * one / every) if one and every else float(ranks)
    ref = dict(profile.reference or {})
    for k in ("reference_read_Bps", "reference_write_Bps"):
        if ref.get(k):
            ref[k] = ref[k] / ranks
    return replace(profile, cores=(profile.cores or 1) / ranks, reference=ref,
                   durable_fresh_Bps=part(profile.durable_fresh_Bps, ranks),
                   durable_freed_Bps=part(profile.durable_freed_Bps, ranks),
                   file_creates_per_s=part(profile.file_creates_per_s, ranks),
                   fsyncs_per_s=part(profile.fsyncs_per_s, ranks),
                   buffered_write_Bps=part(profile.buffered_write_Bps, slow),
                   fresh_memory_Bps=part(profile.fresh_memory_Bps, slow))


@dataclass(frozen=True)
class Projection:
    """One approach's step at a workload: the slowest rank's predicted seconds and the checkpoint's size over
    them in GiB/s (MLPerf Storage's unit: its "GB" are GiB)."""

    approach: str
    step: str
    workload: str
    rank_bytes: int
    total_bytes: int
    nodes: int
    rank: Prediction | None

    @property
    def seconds(self) -> float | None:
        return self.rank.seconds if self.rank else None

    @property
    def GiBps(self) -> float | None:
        return self.total_bytes / self.rank.seconds / 2**30 if self.rank and self.rank.seconds else None


def project(cards: list[Card], profile: MachineProfile, w: Workload, payload=None) -> list[Projection]:
    """Every card's step at workload ``w``, ``profile`` being one node (each node alike, no network between
    them); ``payload``: the whole checkpoint's bytes for a card where the workload's do not apply (a model's
    weights as the card's approach stores them, :func:`weights_on`), split evenly over the ranks."""
    node = shared(profile, w.on_node)
    out = []
    for c in cards:
        total = payload(c) if payload else w.total_bytes
        size = -(-total // w.ranks) if payload else w.rank_bytes
        out.append(Projection(c.approach, c.step, w.name, size, total, w.nodes, predict(c, node, size)))
    return out


# what the projection measured and what it assumed, for the reader of its table
MEASURED = ("each approach's work per byte (its cost card, this suite's run)",
            "the node's disk, page cache, memory, cores, file creates and fsyncs (the profile)")
ASSUMED = ("the ranks of a node share its disk, file creates and fsyncs evenly, and its cores",
           "the ranks together copy memory no faster than every core did in the profile",
           "nodes are alike and independent: no shared storage, no network",
           "the CPU seconds per byte of the card's machine on the target (no CPU-speed yardstick)",
           "the checkpoint's layout: fp16 weights and fp32 optimizer state (master weights, Adam's two "
           "moments), sharded by the workload's ZeRO stage")


def assumed(w: Workload) -> tuple[str, ...]:
    """What a projection to ``w`` assumes: :data:`ASSUMED`, less the checkpoint's layout where ``w`` is a model's
    weights alone (each approach's own bytes)."""
    return ASSUMED if w.optimizer else ASSUMED[:-1] + ("the weights' bytes as each approach stores them",)


def as_dict(p: Projection) -> dict:
    """One projection as JSON: the slowest rank's seconds, the checkpoint's GiB/s, the binding part and every part."""
    return {"approach": p.approach, "step": p.step, "workload": p.workload, "rank_bytes": p.rank_bytes,
            "total_bytes": p.total_bytes, "nodes": p.nodes, "seconds": p.seconds, "GiBps": p.GiBps,
            "binding": p.rank.binding if p.rank else None, "parts": p.rank.parts if p.rank else None}


def text(w: Workload, got: list[Projection]) -> str:
    """The projection as the CLI prints it: the workload, one line per approach and step, what was measured and
    what was assumed."""
    most = f"{max(p.rank_bytes for p in got) / 1e9:.3g} GB"
    if w.optimizer:
        size = f"{w.total_bytes / 2**30:,.0f} GiB" + (f" (MLPerf Storage publishes {w.published_GiB:,.0f})"
                                                      if w.published_GiB else "")
        head = (f"{w.name}: {w.params / 1e9:.1f} B parameters, {size}; {w.ranks} ranks (TP {w.tp} x PP {w.pp}, "
                f"ZeRO {w.zero}) on {w.nodes} node(s) of {w.on_node}; the slowest rank writes {most}. "
                f"Source: {w.source}.")
    else:  # a model's weights: their bytes are each approach's own
        sizes = sorted({p.total_bytes for p in got})
        head = (f"{w.name}: {w.params:,} parameters, {sizes[0] / 2**30:.3g}-{sizes[-1] / 2**30:.3g} GiB as the "
                f"approaches store them, split evenly over {w.ranks} ranks of one node; the slowest rank writes "
                f"{most}. Source: {w.source}.")
    body = [[p.approach, p.step, f"{p.rank_bytes / 1e9:.2f}", f"{p.seconds:.3g}" if p.rank else "-",
             f"{p.GiBps:.3g}" if p.GiBps else "-", p.rank.binding if p.rank else "-"] for p in got]
    table = render(["approach", "step", "GB per rank", "slowest rank s", "checkpoint GiB/s", "binding"], body)
    notes = "\n".join([f"measured: {m}" for m in MEASURED] + [f"assumed: {a}" for a in assumed(w)])
    return f"{head}\n{table}\n{notes}"


# -- checkpoints inside a training loop (docs/decisions.md#projection-training) ------------------------------------
D2H_ASSUMED_Bps = 25e9  # assumed, never measured here: one accelerator's device-to-host copy (PCIe 4.0 x16, pinned)
SHARE = 0.01  # the share of a run's time the checkpoints may take


def training(savers: dict[str, dict], cards: list[Card], profile: MachineProfile, w: Workload,
             d2h_Bps: float = D2H_ASSUMED_Bps) -> list[dict]:
    """07's savers in its accelerator-bound loop (``report.training.per_saver``'s figures) at workload ``w``: per
    saver the slowest rank's bytes, the loop's blocking time per checkpoint, the time until durable and the
    interval at which the checkpoints take at most :data:`SHARE` of the run
    (docs/decisions.md#projection-training). A saver whose format has no save card, or that took no verified
    checkpoint, is left out."""
    saves = {c.approach: c for c in cards if c.step == "save"}
    node, one = shared(profile, w.on_node), median(profile.memory_copy_1_Bps)
    out = []
    for name, s in savers.items():
        card = saves.get(s.get("sync_of") or "")
        if not s.get("n") or card is None or not s.get("state_bytes"):
            continue
        save = predict(card, node, w.rank_bytes)
        if save is None:
            continue
        d2h = w.rank_bytes / d2h_Bps  # every saver's state comes off the device first
        durable = d2h + save.seconds
        if s["mode"] == "sync":
            blocking, how = durable, "D2H copy + the whole save"
        else:
            staged = median_of(s.get("staging"))
            copy_here = staged if staged is not None else (s["state_bytes"] / one if one else None)
            if copy_here is None:
                continue
            rest = max(0.0, median_of(s["blocking"]) - copy_here) / s["state_bytes"]
            blocking = d2h + rest * w.rank_bytes
            how = "D2H copy" + (f" + {rest * w.rank_bytes:.3g} s" if rest else "")
        interval = max(blocking * (1 - SHARE) / SHARE, durable - blocking)
        out.append({"saver": name, "mode": s["mode"], "format": card.approach, "GB per rank": w.rank_bytes / 1e9,
                    "blocking_s": blocking, "blocked by": how, "durable_s": durable,
                    "binding": save.binding, "interval for 1%": interval})
    return out


# -- a published result re-derived (docs/decisions.md#projection-published) ----------------------------------------
@dataclass(frozen=True)
class Published:
    """One published MLPerf Storage checkpoint result and what its system description gives."""

    name: str
    source: str
    workload: str
    approach: str  # the suite's approach that writes as its benchmark does
    cores: int
    write_Bps: float  # the drive's sequential rates: the description has none; the vendor's stated
    read_Bps: float
    rates_source: str
    save_s: float  # the published mean seconds per checkpoint
    load_s: float
    missing: tuple[str, ...]


PUBLISHED = Published(
    "Solidigm D5-P5336 61.44 TB (one PCIe 4.0 QLC drive), Lenovo SR665 V3, 2x AMD EPYC 9655",
    "mlcommons/storage_results_v3.0 (commit 068d91f, in review) closed/NewFW/results/"
    "Solidigm_D5-P5336_61TB_Gen4_NVMe_QLC/checkpointing/llama3-8b/20260713_104840 (write) and "
    "20260713_105538 (read), summary.json",
    "llama3-8b", "pytorch-fp32", 192, 3.3e9, 7.0e9,
    "the vendor's stated sequential rates as reported by architecting.it; not in the description",
    34.039, 21.023,
    ("the drive's rates (the vendor's stated ones taken)", "the file system and its mount options",
     "the memory's copy and fill rates, the page cache's write (this machine's taken)",
     "the cost of a file create and an fsync (this machine's taken)",
     "the CPU's speed (the cards' CPU seconds per byte are this machine's)"))


def described(profile: MachineProfile, pub: Published = PUBLISHED) -> MachineProfile:
    """``profile`` with what ``pub``'s description gives put in: its cores and its drive's rates as every disk rate
    the model reads."""
    def rate(x: float) -> Rate:
        return Rate(x, 0.0, (x,))

    ref = {**(profile.reference or {}), "reference_read_Bps": pub.read_Bps, "reference_write_Bps": pub.write_Bps}
    # the description names no file system: none taken (this machine's may be a tmpfs, which has no disk)
    return replace(profile, cores=pub.cores, fs_type=None, fs_device=None, mount_options=None,
                   durable_fresh_Bps=rate(pub.write_Bps),
                   durable_freed_Bps=rate(pub.write_Bps), direct_write_Bps=rate(pub.write_Bps),
                   direct_read_Bps=rate(pub.read_Bps), reference=ref)


def published_check(cards: list[Card], profile: MachineProfile, pub: Published = PUBLISHED) -> list[dict]:
    """``pub`` re-derived: its approach's cards projected to its workload on its described node, against the
    published seconds (error: published over projected, less 1; within 25%)."""
    w = WORKLOADS[pub.workload]
    mine = [c for c in cards if c.approach == pub.approach]
    out = []
    for p in project(mine, described(profile, pub), w):
        if p.rank is None:
            continue
        got = pub.save_s if p.step == "save" else pub.load_s
        err = got / p.seconds - 1
        out.append({"step": p.step, "published_s": got, "projected_s": p.seconds, "error": err,
                    "within": abs(err) <= 0.25, "binding": p.rank.binding})
    return out
