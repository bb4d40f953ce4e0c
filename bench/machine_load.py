"""How busy the rest of the machine was while a benchmark measured something.

The load average counts the benchmark's own threads (and lags by a minute), so it cannot tell a
quiet machine from a busy one while we run. `OtherLoad` instead measures the CPU time everyone
else used during a window: the machine's busy time from /proc/stat minus the CPU time of this
process and its descendants (vLLM's engine processes included), in cores on average. A ratio
between two timings is only meaningful when both windows had (nearly) nothing else running.
"""

from __future__ import annotations

import os
import time

import psutil

BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (not idle, iowait)


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (every core)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in BUSY_FIELDS) / ticks


def own_cpu_seconds() -> float:
    """CPU seconds of this process, its live descendants and its children already reaped."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    t = os.times()
    return total + t.children_user + t.children_system


class OtherLoad:
    """Context manager: `.cores` = average cores used by other processes during the block."""

    def __enter__(self) -> "OtherLoad":
        self.load_before = os.getloadavg()[0]
        self._wall = time.perf_counter()
        self._busy = machine_busy_seconds()
        self._own = own_cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._wall
        others = (machine_busy_seconds() - self._busy) - (own_cpu_seconds() - self._own)
        self.cores = max(0.0, others) / max(wall, 1e-9)
        self.load_after = os.getloadavg()[0]

    def summary(self) -> str:
        return (f"others used {self.cores:.2f} cores; load average {self.load_before:.1f} -> "
                f"{self.load_after:.1f}")
