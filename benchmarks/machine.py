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


def cpu_line() -> str:
    """The CPU's model and whether it has AMX (bf16 matrix units): bf16 on a CPU without
    them runs several times slower, so every CPU figure names it."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        return "CPU: unknown"
    amx = sorted(f for f in flags if f.startswith("amx"))
    return f"CPU: {model or 'unknown'}; AMX: {' '.join(amx) if amx else 'none'}"
