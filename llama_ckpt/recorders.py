"""Recorders handed to the code they measure (never held in class attributes,
so that nothing silently records nothing)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

import psutil


class Steps:
    """Where a save's time goes: ``with steps("commit"):`` adds the block's
    wall time to ``steps.seconds["commit"]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def high_water_mark() -> int:
    """This process's peak resident set size (``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak resident set size of this process over a block of code. Uses the
    kernel's high-water mark, reset on entry; where that reset is not allowed
    a thread samples the RSS every 5 ms instead."""

    def __enter__(self):
        self.sampler = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.peak = 0
            self._stop = threading.Event()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self):
        proc = psutil.Process()
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc):
        if self.sampler is not None:
            self._stop.set()
            self.sampler.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
        else:
            self.peak = high_water_mark()
        return False
