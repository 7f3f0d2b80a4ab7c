"""The measurement: the protocol for one approach (single-process or on
ranks), the probes (disk reference, peak memory), the run's scaffolding."""
