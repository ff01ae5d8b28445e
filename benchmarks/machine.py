"""What the benchmarks read about the machine they run on (imported by the scripts beside it)."""
from __future__ import annotations

import time


def cpu_busy(seconds: float = 3.0) -> float | None:
    """The share of the machine's CPU time that was busy over ``seconds`` (Linux /proc/stat):
    what other work takes before a measurement starts."""
    def read():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait
    try:
        t1, i1 = read()
        time.sleep(seconds)
        t2, i2 = read()
        return 1 - (i2 - i1) / max(t2 - t1, 1)
    except OSError:
        return None
