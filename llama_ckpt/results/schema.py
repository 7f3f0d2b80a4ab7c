"""The row schema: the fields of a measurement row and of a training row,
units in their names, and which rows count as results."""

from __future__ import annotations


# Every measurement row has exactly these fields (None where not measured).
MEASUREMENT_FIELDS = (
    "record", "run_id", "approach", "model",
    # the weights measured: "float16-origin" (a preset's values rounded to float16, held in float32: what a
    # float32 copy of the published model holds), "float32" (full mantissas), "as loaded" (MODEL_PATH)
    "weights",
    # the phase whose run measured the row (a configuration is measured once per run, its rows shared)
    "phase",
    "path", "knobs",
    "n_tensors", "n_params", "tensor_set", "stored_dtype", "source_dtype", "repeat",
    # whether the kernel's page and buffer cache was dropped before the save (fsutil.settle: root only), and the
    # file system's free space discarded (fsutil.trim: root only), as the run's `prepare` allows; the throttle on
    # the checkpoints' disk while it was measured (the run's cap, or one it found: bench.diskcap), None: none
    "caches_dropped", "free_space_trimmed", "disk_throttle_Bps",
    # the disk's state beside the row's round: the short reference taken before it from the same start (round,
    # write_Bps, read_Bps, bytes); None where none was taken (S3, memory, sharded, rows from before)
    "disk_state",
    # how busy the machine was beside the timed save and load, from /proc/stat: other processes' and the
    # kernel's CPU seconds, steal seconds, wall seconds, cores, and whether it counts as busy (recorders.MachineBusy)
    "busy_save", "busy_load",
    "save_s", "load_s", "load_cold", "resident_after_evict", "load_warm_s",
    "bytes_on_disk", "bytes_apparent", "n_files", "payload_bytes", "by_kind",
    "peak_rss_save_bytes", "peak_rss_load_bytes",
    # the process's resident memory when the timed save / load began (after freed memory was handed back):
    # the baseline each peak stands on
    "rss_before_save_bytes", "rss_before_load_bytes",
    # the peaks' anonymous part (must fit in memory) and file-backed part (mapped pages the kernel can drop)
    "peak_rss_anon_save_bytes", "peak_rss_file_save_bytes", "peak_rss_anon_load_bytes", "peak_rss_file_load_bytes",
    "save_phases",
    # CPU seconds (user, system) and read/write system calls with their bytes, of the timed save and load
    "cpu_io_save", "cpu_io_load",
    # the save's fsync/fdatasync calls: Python's counted, plus the format's native ones by its stated policy
    # (None where the policy does not say)
    "fsyncs_save",
    # how many threads the save writes with, at most (the format's own figure; the bounds' page-cache copy)
    "write_streams",
    "storage", "s3_delay_ms", "medium", "requests_save", "requests_load",
    "world_size", "load_world_size", "ranks_save", "ranks_load",
    # sharded: who started the ranks ("spawn": this suite on one host;
    # "torchrun": a launcher, any number of nodes) and the jobs' topology
    "launcher", "nodes", "ranks_per_node", "load_nodes", "load_ranks_per_node",
    "verified", "max_abs_err", "max_rel_err", "n_overflow", "n_flushed", "error",
    "finished_at",
)


# A checkpoint taken inside the training loop (07-training), one row each.
TRAINING_FIELDS = (
    "record", "run_id", "approach",
    # which loop: "accelerator" (the device's work a wait, the host's an in-place update of every tensor) or
    # "cpu" (forward, backward and AdamW on this machine's cores); the accelerator loop's device seconds per step
    "loop", "device_step_s",
    "mode", "blocked_by", "sync_of", "format", "knobs", "model", "weights",
    "n_params",
    "tensor_set",
    "state", "checkpoint_bytes", "repeat", "step",
    # whether the kernel's page and buffer cache was dropped before the save (fsutil.settle: root only), the
    # throttle on the disk, and how busy the machine was beside the segment (recorders.MachineBusy)
    "caches_dropped", "free_space_trimmed", "disk_throttle_Bps", "busy",
    # seconds: what the loop was held for (the call, plus the wait for the saver's staging before its next
    # update); from the call until committed (durable); the loop's wait at the end of the segment for a save
    # still in flight; the segment's wall time
    "blocking_s", "durable_s", "stall_s", "segment_s",
    # of the blocking time: the call until it returned; the wait before the loop's next in-place update for a
    # staging that goes on after the call (DCP's async staging), None where there is none
    "call_s", "update_wait_s",
    # the staging copy where the saver makes one itself (of the blocking time, but for DCP's async staging)
    "staging_s",
    # every step's seconds in the segment: before the call (no save in flight), while the save was in
    # flight when the step began, and after it was durable
    "steps_before_s", "steps_inflight_s", "steps_after_s",
    # the process's CPU seconds during each step after the save was durable (the loop's own)
    "steps_after_cpu_s",
    # the accelerator loop: each step's host part (after the device wait), wall and thread CPU seconds, for the
    # steps that began while the save was in flight and after it was durable
    "host_inflight_s", "host_after_s", "host_cpu_inflight_s", "host_cpu_after_s",
    # resident memory: the process's just before the call, its peak over the steps before the call (no save
    # in flight) and from the call until durable; the machine's memory in use (every process: a forked
    # writer, pages copied on write, a writer process's copy) over the same two spans
    "rss_before_bytes", "peak_rss_idle_bytes", "peak_rss_bytes", "machine_used_idle_bytes", "machine_used_bytes",
    # what the saver keeps from one checkpoint to the next (a staging copy), after this one
    "kept_bytes",
    # CPU seconds (this process and the writer processes it waited for) over the steps before the call and
    # over the segment; a writer's own CPU seconds where it is one thread or process of its own
    "cpu_before_s", "cpu_segment_s", "writer_cpu_s",
    "load_s", "load_cold", "bytes_on_disk", "n_files",
    "verified", "error", "finished_at",
)


# Checkpoints saved back to back (``run``'s sustained mode, 05-formats), one record per approach.
SUSTAINED_FIELDS = (
    "record", "run_id", "approach", "model", "weights", "phase", "knobs", "n_saves",
    # the disk state the first save starts from (the rounds'); nothing is dropped or trimmed between the saves
    "free_space_trimmed", "caches_dropped", "disk_throttle_Bps",
    # how busy the machine was beside the saves (recorders.MachineBusy)
    "busy",
    # each save's seconds, in order; then each load's, in the same order, every one after its checkpoint was
    # evicted, and whether every eviction was confirmed
    "saves_s", "loads_s", "loads_cold",
    "bytes_on_disk", "verified", "error", "finished_at",
)


def _row(fields: tuple[str, ...], record: str, values: dict) -> dict:
    """A record with exactly ``fields`` (None where not given); an unknown field is an error."""
    unknown = set(values) - set(fields)
    if unknown:
        raise KeyError(f"not {record} fields: {sorted(unknown)}")
    row = dict.fromkeys(fields)
    row.update(values, record=record)
    return row


def training_row(**values) -> dict:
    return _row(TRAINING_FIELDS, "training", values)


def sustained_row(**values) -> dict:
    return _row(SUSTAINED_FIELDS, "sustained", values)


def measurement_row(**values) -> dict:
    return _row(MEASUREMENT_FIELDS, "measurement", values)


def is_valid(row: dict) -> bool:
    """A row counts as a result only when it finished and round-tripped."""
    return row.get("record") == "measurement" and not row.get("error") and row.get("verified") is True \
        and row.get("save_s") is not None and row.get("load_s") is not None
